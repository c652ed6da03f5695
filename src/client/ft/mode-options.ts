import { StorageError } from '../../disk-formats/errors.js'
import type { FtMode } from './protocol.js'

/**
 * How a pair keeps its backup, with the mode's options: what `vm run --ft-mode`, `--ft-epoch-ms`,
 * `--no-ft-diff`, `--ft-colo-timeout-ms` and `--ft-colo-checkpoint-ms` take, and what a host agent's start request carries
 * (`ft.mode`, …). An option of another mode is absent.
 */
export interface FtModeOptions {
  mode: FtMode
  /** checkpoint: the epoch, ms */
  epochMs?: number
  /** checkpoint: the pages the backup names go as diffs (false: every dirty page whole) */
  diff?: boolean
  /** colo: an output of the primary unmatched this long resyncs the secondary, ms */
  coloTimeoutMs?: number
  /** colo: a resync at least this often, matched or not, ms (absent: only on a mismatch) */
  coloCheckpointMs?: number
}

export const FT_MODES: readonly FtMode[] = ['replay', 'checkpoint', 'colo']
/** the bounds and default of each option (vm run's defaults) */
export const EPOCH_MS = { min: 5, max: 10_000, default: 25 } as const
export const COLO_TIMEOUT = { min: 5, max: 60_000, default: 300 } as const
/** `--ft-colo-checkpoint-ms` (no default: no periodic resync) */
export const COLO_CHECKPOINT = { min: 5, max: 3_600_000 } as const

/** `v` as a mode, or InvalidArgument naming `what`. */
export function checkFtMode(v: unknown, what: string): FtMode {
  if (!FT_MODES.includes(v as FtMode)) throw new StorageError('InvalidArgument', `invalid ${what} ${JSON.stringify(v)} (${FT_MODES.slice(0, -1).join(', ')} or ${FT_MODES.at(-1)})`)
  return v as FtMode
}

/** `v` (ms) within `b`, or InvalidArgument naming `what`. */
export function checkMs(v: unknown, b: { min: number; max: number }, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < b.min || v > b.max) throw new StorageError('InvalidArgument', `invalid ${what} ${JSON.stringify(v)} (${b.min} to ${b.max} ms)`)
  return v
}

/**
 * A mode and its options from a JSON object's fields `mode`, `epochMs`, `diff`, `coloTimeoutMs`,
 * `coloCheckpointMs` (absent: replay, and each option of the mode its default; no periodic resync); an option given for another mode is
 * refused. `at` prefixes the fields' names in messages (`"ft.`).
 */
export function parseFtModeOptions(b: Record<string, unknown>, at: string): FtModeOptions {
  const name = (k: string) => `"${at}${k}"`
  const mode = b.mode === undefined || b.mode === null ? 'replay' : checkFtMode(b.mode, name('mode'))
  const given = (k: string) => b[k] !== undefined && b[k] !== null
  const only = (k: string, m: FtMode) => {
    if (given(k) && mode !== m) throw new StorageError('InvalidArgument', `${name(k)} is an option of the ${m} mode, not ${mode}`)
    return mode === m
  }
  const o: FtModeOptions = { mode }
  if (only('epochMs', 'checkpoint')) o.epochMs = given('epochMs') ? checkMs(b.epochMs, EPOCH_MS, name('epochMs')) : EPOCH_MS.default
  if (only('diff', 'checkpoint')) {
    if (given('diff') && typeof b.diff !== 'boolean') throw new StorageError('InvalidArgument', `${name('diff')} must be true or false`)
    o.diff = (b.diff as boolean | undefined) ?? true
  }
  if (only('coloTimeoutMs', 'colo')) o.coloTimeoutMs = given('coloTimeoutMs') ? checkMs(b.coloTimeoutMs, COLO_TIMEOUT, name('coloTimeoutMs')) : COLO_TIMEOUT.default
  if (only('coloCheckpointMs', 'colo') && given('coloCheckpointMs')) o.coloCheckpointMs = checkMs(b.coloCheckpointMs, COLO_CHECKPOINT, name('coloCheckpointMs'))
  return o
}

/** The `vm run` options of a mode (`--option=value`). */
export function ftModeArgs(o: FtModeOptions): string[] {
  const args = [`--ft-mode=${o.mode}`]
  if (o.epochMs !== undefined) args.push(`--ft-epoch-ms=${o.epochMs}`)
  if (o.diff === false) args.push('--no-ft-diff')
  if (o.coloTimeoutMs !== undefined) args.push(`--ft-colo-timeout-ms=${o.coloTimeoutMs}`)
  if (o.coloCheckpointMs !== undefined) args.push(`--ft-colo-checkpoint-ms=${o.coloCheckpointMs}`)
  return args
}
