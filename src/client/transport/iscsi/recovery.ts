import { StorageError } from '../../../disk-formats/errors.js'
import type { Timers } from '../../../server/net/timers.js'

/**
 * How a session lost with its connection is re-established: `attempts` logins at most, the
 * first at once, each next after a delay doubling from `firstDelayMs` up to `maxDelayMs`.
 * `attempts: 0` turns recovery off (the commands in flight fail with the connection).
 */
export interface ReconnectPolicy {
  attempts?: number
  firstDelayMs?: number
  maxDelayMs?: number
}

/** 6 attempts over about 3 s (0, 0.1, 0.2, 0.4, 0.8, 1.6 s): a restarted target is back by then. */
const DEFAULT_POLICY: Required<ReconnectPolicy> = { attempts: 6, firstDelayMs: 100, maxDelayMs: 5000 }

export function reconnectPolicy(p: ReconnectPolicy = {}): Required<ReconnectPolicy> {
  return { ...DEFAULT_POLICY, ...p }
}

/** The delay before attempt `i` (0-based) of a reconnection. */
export function backoff(p: Required<ReconnectPolicy>, i: number): number {
  return i === 0 ? 0 : Math.min(p.maxDelayMs, p.firstDelayMs * 2 ** (i - 1))
}

/**
 * The session could not be re-established: every command not answered fails with this. `attempts`
 * logins were tried; `cause` is the last one's error (the first: the connection's loss).
 */
export class SessionLostError extends StorageError {
  constructor(
    where: string,
    readonly attempts: number,
    cause: Error,
  ) {
    super('IoError', `iSCSI ${where}: the connection was lost and ${attempts} login attempt(s) failed (last: ${cause.message})`, undefined, { cause })
  }
}

export interface Reconnectable {
  /** where the session goes, for messages */
  readonly where: string
  /** the session is being closed by its owner: stop trying */
  stopped(): boolean
  /** opens a connection and logs in with the session's ISID and initiator name (RFC 7143 §6.3.5) */
  establish(): Promise<void>
}

/**
 * Re-establishes a session after its connection was lost (`cause`): logins with back-off
 * (session reinstatement: the same ISID and initiator name, TSIH 0, so the target ends what is
 * left of the old session). Resolves once logged in again; rejects with SessionLostError when
 * every attempt failed, or at once when the owner closes the session meanwhile.
 */
export async function reconnect(s: Reconnectable, cause: Error, policy: Required<ReconnectPolicy>, timers: Timers): Promise<void> {
  let last = cause
  for (let i = 0; i < policy.attempts; i++) {
    const delay = backoff(policy, i)
    if (delay) await new Promise<void>((r) => timers.setTimeout(r, delay))
    if (s.stopped()) throw last
    try {
      await s.establish()
      return
    } catch (e) {
      last = e instanceof Error ? e : new Error(String(e))
      // a refusal that another login will not change: the target no longer has this LU for us
      if (e instanceof StorageError && (e.code === 'NotFound' || e.code === 'ReadOnly' || e.code === 'Unsupported')) {
        throw new SessionLostError(s.where, i + 1, last)
      }
    }
  }
  throw new SessionLostError(s.where, policy.attempts, last)
}
