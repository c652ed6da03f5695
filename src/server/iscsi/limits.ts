import { TARGET_FIRST_BURST } from './negotiation.js'

/*
 * Memory per connection. A client that sends commands and never reads their replies (or never
 * sends the data its writes announce) makes the connection hold at most CONNECTION_MEMORY_BOUND:
 * - DATA_BUDGET: data buffers of the commands being run (a write's data-out, what a read or
 *   verify reads from the disk) plus replies queued on the socket. A command waits for its bytes
 *   before it runs (a write: before its R2T); while the budget is exceeded by queued replies, no
 *   further request is read.
 * - RECEIVE_QUEUE: bytes received and not yet parsed (the socket is paused beyond it).
 * - per command admitted (CMD_WINDOW in the CmdSN window, MAX_IMMEDIATE immediate ones): the PDU
 *   it came in and its unsolicited data, at most TARGET_FIRST_BURST (= MaxRecvDataSegmentLength).
 * MaxCmdSN advances as commands complete, not as they arrive, so a well-behaved initiator is
 * throttled by the window; a command outside it is silently ignored (RFC 7143 §4.2.2.1), and an
 * immediate command over MAX_IMMEDIATE is rejected (reason "too many immediate commands").
 */
export const CMD_WINDOW = 64
export const MAX_IMMEDIATE = 8
/** The LU's maximum transfer (32 MiB, VPD B0): the largest command fits the budget alone. */
export const DATA_BUDGET = 32 << 20
export const RECEIVE_QUEUE = 8 << 20
/**
 * 32 + 8 + 72 × 0.25 = 58 MiB: "under 64 MiB per connection" (README, iSCSI). Not counted: a
 * command needing more than the whole budget (ORWRITE, or VERIFY with BYTCHK 3, of over 16 MiB)
 * waits until it has the budget to itself, then may use up to twice it.
 */
export const CONNECTION_MEMORY_BOUND = DATA_BUDGET + RECEIVE_QUEUE + (CMD_WINDOW + MAX_IMMEDIATE) * TARGET_FIRST_BURST
/** Largest data-out buffer a command may ask for: the LU's maximum transfer; it must fit DATA_BUDGET. */
export const MAX_EXPECTED_DATA = DATA_BUDGET
