import { header } from '../../../server/iscsi/bhs.js'
import * as P from '../../../server/iscsi/pdu.js'
import type { Timers } from '../../../server/net/timers.js'

/** Task management functions (RFC 7143 §11.5.1; SAM-5 §7). */
export const ABORT_TASK = 1
export const ABORT_TASK_SET = 2
export const LOGICAL_UNIT_RESET = 5
export const TARGET_WARM_RESET = 6

/** Task management responses (RFC 7143 §11.6.1). */
export const FUNCTION_COMPLETE = 0
export const TASK_DOES_NOT_EXIST = 1
const RESPONSES: Record<number, string> = {
  0: 'function complete',
  1: 'task does not exist',
  2: 'LUN does not exist',
  3: 'task still allegiant',
  4: 'task allegiance reassignment not supported',
  5: 'task management function not supported',
  6: 'function authorization failed',
  255: 'function rejected',
}
export const tmfResponseName = (r: number) => RESPONSES[r] ?? `response ${r}`

export interface TmfFields {
  fn: number
  lun: Buffer
  itt: number
  /** ABORT TASK: the task's tag and CmdSN; else RESERVED_TAG and our CmdSN */
  refItt: number
  refCmdSN: number
  cmdSN: number
  expStatSN: number
}

/** A Task Management Function Request BHS (RFC 7143 §11.5), sent as an immediate command. */
export function tmfRequest(f: TmfFields): Buffer {
  const b = header(P.TASK_MGMT_REQUEST | 0x40, 0x80 | f.fn)
  f.lun.copy(b, 8)
  b.writeUInt32BE(f.itt, 16)
  b.writeUInt32BE(f.refItt, 20)
  b.writeUInt32BE(f.cmdSN, 24)
  b.writeUInt32BE(f.expStatSN, 28)
  b.writeUInt32BE(f.refCmdSN, 32)
  return b
}

/**
 * Task management requests awaiting their responses, by ITT. `request` resolves with the
 * response code, or null when none came within `timeoutMs` or the connection was lost.
 */
export class TmfRequests {
  private readonly pending = new Map<number, (code: number | null) => void>()

  constructor(private readonly timers: Timers) {}

  request(itt: number, send: () => void, timeoutMs: number): Promise<number | null> {
    return new Promise((resolve) => {
      const timer = this.timers.setTimeout(() => this.settle(itt, null), timeoutMs)
      this.pending.set(itt, (code) => {
        this.timers.clearTimeout(timer)
        resolve(code)
      })
      send()
    })
  }

  /** A Task Management Function Response arrived. */
  answer(bhs: Buffer): void {
    this.settle(P.ittOf(bhs), bhs[2])
  }

  /** The connection is gone: no answer will come. */
  lost(): void {
    for (const itt of [...this.pending.keys()]) this.settle(itt, null)
  }

  private settle(itt: number, code: number | null): void {
    const r = this.pending.get(itt)
    if (!r) return
    this.pending.delete(itt)
    r(code)
  }
}

/** What the escalation needs from the session (the initiator). */
export interface Escalating<T> {
  /** ABORT TASK of `task`: the response code, null when none came in time */
  abortTask(task: T): Promise<number | null>
  /** LOGICAL UNIT RESET: the response code, null when none came in time */
  lunReset(): Promise<number | null>
  /** the tasks still waiting for an answer */
  outstanding(): T[]
  /** sends these tasks again (those answered meanwhile are left alone) */
  retry(tasks: T[]): void
  /** ends the connection: the session's recovery logs in again and re-issues what is left */
  dropConnection(why: string): void
}

/**
 * What is done about commands that got no answer in time, in the order of SAM-5 §7 and of
 * Linux's SCSI error handler: ABORT TASK for each (an answered abort, "complete" or "task does
 * not exist", means the target holds no instance of it any more, so it is sent again); if an
 * abort is not answered or refused, LOGICAL UNIT RESET (which aborts every task of the LU: all
 * outstanding ones are sent again); if that fails too, the connection is dropped and the session
 * recovered. Resolves with the step that settled it.
 */
export async function escalate<T>(s: Escalating<T>, timedOut: T[]): Promise<'aborted' | 'reset' | 'dropped'> {
  const answers = await Promise.all(timedOut.map((t) => s.abortTask(t)))
  if (answers.every((a) => a === FUNCTION_COMPLETE || a === TASK_DOES_NOT_EXIST)) {
    s.retry(timedOut)
    return 'aborted'
  }
  const reset = await s.lunReset()
  if (reset === FUNCTION_COMPLETE) {
    s.retry(s.outstanding())
    return 'reset'
  }
  s.dropConnection(`no answer to ABORT TASK nor to LOGICAL UNIT RESET (${reset === null ? 'none in time' : tmfResponseName(reset)})`)
  return 'dropped'
}
