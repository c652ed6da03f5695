import { execFileSync, spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

/** Is a peer tool on PATH? Tests use it for `skip: reason` when not. */
export function have(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0
}

/** `{ skip: 'qemu-img not installed …' }` or `{}` for t.test options. */
export function needs(...tools: string[]): { skip?: string } {
  const missing = tools.filter((t) => !have(t))
  return missing.length ? { skip: `${missing.join(', ')} not installed (scripts/install-peers.sh)` } : {}
}

/**
 * A python3 that has libnbd's bindings (`import nbd`, Debian python3-libnbd), or null. `nbdsh` runs
 * whatever python3 is first on PATH, which need not be the one the bindings were installed for.
 */
export function libnbdPython(): string | null {
  for (const py of ['python3', '/usr/bin/python3']) if (spawnSync(py, ['-c', 'import nbd']).status === 0) return py
  return null
}

/** Runs a peer tool; throws with its stderr on failure. */
export function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  return execFileSync(cmd, args, { cwd: opts.cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Runs a command and returns its status and output without throwing. */
export function shStatus(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, encoding: 'utf8', env: opts.env ?? process.env })
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr }
}

/**
 * The project's folder: the nearest one above this file with a package.json (this file runs from
 * test/helpers under tsx, and from dist/test/helpers as npm test runs it, compiled).
 */
export const ROOT = ((): string => {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir
    if (dirname(dir) === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`)
  }
})()
/** The `tandem` executable as npm installs it (the bundle `npm run build` makes). */
export const CLI = join(ROOT, 'dist', 'src', 'client', 'cli', 'tandem.cjs')

/** Runs the built `tandem` CLI. */
export function tandem(args: string[], opts: { cwd?: string } = {}) {
  return shStatus(process.execPath, [CLI, ...args], opts)
}

/** A temporary folder removed at the end of the test. */
export function tmp(t: { teardown(fn: () => void): void }, prefix = 'tandem-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => {
    try {
      // retried: a file created in it while it is removed (ENOTEMPTY) goes on the next pass
      rmSync(d, { recursive: true, force: true, maxRetries: 3 })
    } catch (e) {
      // tap reports an error in a teardown with no message: say it here
      console.error(`tmp: could not remove ${d}:`, e)
      throw e
    }
  })
  return d
}

/**
 * A temporary folder on tmpfs (/dev/shm) where there is one, else as `tmp`; removed at the end.
 * The crash tests use it: there fdatasync is nearly free, so kills land in writes rather than
 * mostly in flushes.
 */
export function shmTmp(t: { teardown(fn: () => void): void }, prefix: string): string {
  if (!existsSync('/dev/shm')) return tmp(t, prefix)
  const d = mkdtempSync(join('/dev/shm', prefix))
  t.teardown(() => rmSync(d, { recursive: true, force: true }))
  return d
}

/** Deterministic pseudo-random bytes (xorshift32) so failures reproduce. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1
  return () => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x
  }
}

export function pattern(len: number, seed: number): Buffer {
  const r = rng(seed)
  const b = Buffer.alloc(Math.ceil(len / 4) * 4)
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE(r(), i)
  return b.subarray(0, len)
}

/** Async variants, for tests whose server runs in the same process (a sync child would block it). */
export function run(cmd: string, args: string[], opts: { cwd?: string; input?: string; timeout?: number; env?: NodeJS.ProcessEnv } = {}): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ? { ...process.env, ...opts.env } : undefined })
    // a peer that hangs is killed (and the test sees status 128), never left to hang the run
    const timer = opts.timeout ? setTimeout(() => child.kill('SIGKILL'), opts.timeout) : null
    child.on('close', () => timer && clearTimeout(timer))
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    child.stdin.on('error', () => {}) // a child that exits without reading its input: EPIPE, not a failure
    child.stdin.end(opts.input ?? '')
    child.on('close', (code, signal) => resolve({ status: code ?? (signal ? 128 : -1), stdout, stderr }))
    child.on('error', (e) => resolve({ status: -1, stdout, stderr: stderr + String(e) }))
  })
}

/** Like `run`, but throws with stderr on a non-zero exit. */
export async function runOk(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<string> {
  const r = await run(cmd, args, opts)
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr}`)
  return r.stdout
}

/**
 * `p`, or `late` if it has not settled within `ms`. The timer is unref'd and cleared, so a
 * test file does not wait it out after the race (a bare sleep in a race kept files alive for
 * up to 30 s after their last test).
 */
export function within<T, U>(p: Promise<T>, ms: number, late: U): Promise<T | U> {
  let timer: NodeJS.Timeout | undefined
  const t = new Promise<U>((r) => (timer = setTimeout(() => r(late), ms)))
  timer!.unref()
  return Promise.race([p, t]).finally(() => clearTimeout(timer))
}
