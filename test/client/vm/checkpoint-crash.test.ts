import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { readCheckpoint, writeCheckpoint } from '../../../src/client/vm/checkpoint-file.js'
import { GEN_MEMORY, fillGeneration, generationSource, generationState } from '../../helpers/checkpoint-writer.js'
import { ROOT, rng, shmTmp, tmp } from '../../helpers/peers.js'
import { build } from 'esbuild'

/**
 * SIGKILL at random points of the background write leaves either a complete checkpoint or none
 * that restores (issue 16): a child process writes 16 MiB checkpoints, generation after
 * generation, over a complete one; it is killed after a random delay; the file is then the last
 * generation the child reported done or the one after it, byte for byte — never anything else.
 * TANDEM_CKPT_CRASH_SEED reproduces a run (the seed is printed).
 */
const ROUNDS = Number(process.env.TANDEM_CKPT_CRASH_ROUNDS ?? 15)
const SEED = Number(process.env.TANDEM_CKPT_CRASH_SEED ?? Date.now() % 1_000_000_000)
/** the writer's source, bundled below (this file may run compiled, from dist/test) */
const WRITER = join(ROOT, 'test', 'helpers', 'checkpoint-writer.ts')

interface Writer {
  child: ChildProcess
  ready: Promise<void>
  /** generations reported written */
  done: number[]
  /** how long each took, in ms */
  took: number[]
  exited: Promise<void>
}

/**
 * The writer program bundled with esbuild into one plain JavaScript file: a child that starts in
 * ~0.1 s rather than the ~1.3 s of the TypeScript loader, so the kills are many and the test short.
 */
async function bundleWriter(dir: string): Promise<string> {
  const out = join(dir, 'checkpoint-writer.mjs')
  await build({ entryPoints: [WRITER], outfile: out, bundle: true, platform: 'node', format: 'esm', target: 'node20', logLevel: 'warning' })
  return out
}

function startWriter(program: string, path: string): Writer {
  const child = spawn(process.execPath, [program, path], { stdio: ['pipe', 'pipe', 'inherit'] })
  const done: number[] = []
  const took: number[] = []
  let ready!: () => void
  const w: Writer = { child, done, took, ready: new Promise((r) => (ready = r)), exited: new Promise((r) => child.once('exit', () => r())) }
  createInterface({ input: child.stdout! }).on('line', (line) => {
    if (line === 'ready') ready()
    const m = /^done (\d+) (\d+)$/.exec(line)
    if (m) {
      done.push(Number(m[1]))
      took.push(Number(m[2]))
    }
  })
  return w
}

t.test(`SIGKILL during background checkpoint writes never leaves a torn checkpoint that restores (seed ${SEED})`, async (t) => {
  const dir = shmTmp(t, 'tandem-ckpt-crash-')
  const path = join(dir, 'vm.ckpt')
  const r = rng(SEED)
  const program = await bundleWriter(tmp(t))
  const expected = new Uint8Array(GEN_MEMORY)
  const ram = new Uint8Array(GEN_MEMORY)
  fillGeneration(expected, 0)
  const first = await writeCheckpoint(path, generationSource(expected, 0))
  // kills spread over about one and a half of the child's writes, however fast this machine writes today
  let writeMs = 3 * first.ms // a child's first write (cold code) is slower than this warm one
  const windows: number[] = []
  let onDisk = 0
  let midWrite = 0
  const seen = { previous: 0, next: 0 }
  const writers: Writer[] = []
  t.teardown(() => writers.forEach((w) => w.child.kill('SIGKILL')))
  let next = startWriter(program, path)
  writers.push(next)
  for (let round = 0; round < ROUNDS; round++) {
    const w = next
    await w.ready
    if (round + 1 < ROUNDS) writers.push((next = startWriter(program, path))) // starts while this round runs
    const start = onDisk + 1
    const before = new Set(readdirSync(dir))
    w.child.stdin!.write(`go ${start}\n`)
    const window = Math.max(50, Math.round(1.6 * writeMs))
    windows.push(window)
    await new Promise((res) => setTimeout(res, r() % window))
    w.child.kill('SIGKILL')
    await w.exited
    if (readdirSync(dir).some((f) => !before.has(f))) midWrite++ // killed with its temporary file open

    const lastDone = w.done.length ? w.done[w.done.length - 1] : start - 1
    const ck = await readCheckpoint(path, { memoryBytes: GEN_MEMORY })
    const g = ck.state.readUInt32LE(0)
    if (g !== lastDone && g !== lastDone + 1) t.fail(`round ${round}: the file holds generation ${g}, the writer had finished ${lastDone}`)
    seen[g === lastDone ? 'previous' : 'next']++
    t.ok(ck.state.equals(generationState(g)), `round ${round} (killed after ${w.done.length} writes): the state of generation ${g}`)
    t.match(ck.header, { instret: g * 1000, name: `gen-${g}` })
    await ck.loadMemory(ram)
    fillGeneration(expected, g)
    t.ok(Buffer.from(ram.buffer).equals(Buffer.from(expected.buffer)), `round ${round}: the memory of generation ${g}, byte for byte`)
    onDisk = g
    if (w.took.length) writeMs = w.took[0]
  }
  t.ok(midWrite >= 3, `kills landed inside writes (${midWrite} of ${ROUNDS} rounds left a temporary file)`)
  t.comment(`kills within ${Math.min(...windows)}-${Math.max(...windows)} ms of the start; the file held the last finished generation ${seen.previous} times, the one being written ${seen.next} times`)

  fillGeneration(expected, onDisk + 1)
  await writeCheckpoint(path, generationSource(expected, onDisk + 1))
  t.same(readdirSync(dir), ['vm.ckpt'], 'the next writer removed the temporary files the killed ones left')
})
