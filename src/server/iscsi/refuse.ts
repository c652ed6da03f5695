import type { Socket } from 'node:net'
import { socketQueue } from '../net/tcp-service.js'
import { readField } from '../../disk-formats/struct.js'
import { BHS_LENGTH, header, LoginRequest, LoginResponse } from './bhs.js'
import * as P from './pdu.js'

/** Login status (RFC 7143 §11.13.5): Target Error, "Out of resources". */
export const STATUS_TARGET_ERROR = 0x03
export const DETAIL_OUT_OF_RESOURCES = 0x02

/**
 * Answers a connection over the target's connection limit: a Login Request gets a final Login
 * Response with status 0x0302 (the target has insufficient session, connection or other
 * resources), then the connection ends. Anything else is not answered. The data segment is not
 * read: the reply depends on the BHS alone, and the connection closes after it.
 */
export async function refuseLogin(sock: Socket): Promise<void> {
  const { q } = socketQueue(sock, BHS_LENGTH)
  try {
    const req = await q.read(BHS_LENGTH)
    if (P.opcodeOf(req) !== P.LOGIN_REQUEST) return
    const rq = LoginRequest.fields
    const csg = (P.flagsOf(req) >> 2) & 3
    // the first response of a connection: StatSN starts at the initiator's ExpStatSN; no command window
    const b = LoginResponse.assign(header(P.LOGIN_RESPONSE, csg << 2), {
      isid: readField(req, rq.isid),
      initiatorTaskTag: P.ittOf(req),
      statSN: readField(req, rq.expStatSN),
      expCmdSN: readField(req, rq.cmdSN),
      maxCmdSN: readField(req, rq.cmdSN),
      statusClass: STATUS_TARGET_ERROR,
      statusDetail: DETAIL_OUT_OF_RESOURCES,
    })
    sock.write(b)
  } finally {
    sock.end()
  }
}
