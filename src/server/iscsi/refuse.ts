import type { Socket } from 'node:net'
import { socketQueue } from '../net/tcp-service.js'
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
  const { q } = socketQueue(sock, P.BHS)
  try {
    const req = await q.read(P.BHS)
    if (P.opcodeOf(req) !== P.LOGIN_REQUEST) return
    const csg = (req[1] >> 2) & 3
    const b = P.bhs(P.LOGIN_RESPONSE, csg << 2, 0)
    req.copy(b, 8, 8, 14) // ISID
    b.writeUInt32BE(P.ittOf(req), 16)
    // the first response of a connection: StatSN starts at the initiator's ExpStatSN; no command window
    b.writeUInt32BE(req.readUInt32BE(28), 24)
    b.writeUInt32BE(req.readUInt32BE(24), 28)
    b.writeUInt32BE(req.readUInt32BE(24), 32)
    b[36] = STATUS_TARGET_ERROR
    b[37] = DETAIL_OUT_OF_RESOURCES
    sock.write(b)
  } finally {
    sock.end()
  }
}
