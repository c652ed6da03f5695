/**
 * Big sparse disks, Tandem beside qemu-img: create 2T and 100T, convert and map the 4 TiB
 * monolithicFlat example (512 bytes written at 900 GiB), check a new 2T disk. Each command runs
 * under /usr/bin/time: wall seconds, user+sys CPU seconds, peak RSS, and the bytes the result
 * takes on disk. `node dist/scripts/bench/big-disks.js [dir]` (default: a folder in /tmp).
 */
import { spawnSync } from 'node:child_process'
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const CLI = join(ROOT, 'dist', 'src', 'client', 'cli', 'tandem.cjs')
const DIR = process.argv[2] ?? mkdtempSync(join(tmpdir(), 'tandem-big-'))

interface Timed {
  wall: number
  cpu: number
  rssMiB: number
}

function timed(cmd: string, args: string[]): Timed {
  const r = spawnSync('/usr/bin/time', ['-f', '%e %U %S %M', cmd, ...args], { encoding: 'utf8', cwd: DIR })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`)
  const [wall, user, sys, rss] = r.stderr.trim().split('\n').pop()!.split(' ').map(Number)
  return { wall, cpu: user + sys, rssMiB: rss / 1024 }
}

/** Bytes on disk of the files whose names start with `prefix`. */
function du(prefix: string): number {
  return readdirSync(DIR)
    .filter((f) => f.startsWith(prefix))
    .reduce((n, f) => n + statSync(join(DIR, f)).blocks * 512, 0)
}

function clean(prefix: string): void {
  for (const f of readdirSync(DIR)) if (f.startsWith(prefix)) rmSync(join(DIR, f))
}

const rows: string[][] = []
function row(what: string, who: string, t: Timed, bytes?: number): void {
  rows.push([what, who, t.wall.toFixed(2), t.cpu.toFixed(2), t.rssMiB.toFixed(0), bytes === undefined ? '' : (bytes / 2 ** 20).toFixed(2)])
}

for (const size of ['2T', '100T']) {
  clean('t-')
  clean('q-')
  row(`create ${size}`, 'tandem', timed('node', [CLI, 'disk', 'create', `t-${size}.vmdk`, '--size', size]), du('t-'))
  row(`create ${size}`, 'qemu-img', timed('qemu-img', ['create', '-q', '-f', 'vmdk', `q-${size}.vmdk`, size]), du('q-'))
}
clean('t-')
clean('q-')
timed('node', [CLI, 'disk', 'create', 'check-2T.vmdk', '--size', '2T'])
row('check 2T (new)', 'tandem', timed('node', [CLI, 'disk', 'check', 'check-2T.vmdk']))
row('check 2T (new)', 'qemu-img', timed('qemu-img', ['check', '-q', 'check-2T.vmdk']))
clean('check-')

timed('node', [CLI, 'disk', 'create', 'flat.vmdk', '--type', 'flat', '--size', '4T'])
timed('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0xab 900G 512', 'flat.vmdk'])
row('convert 4T flat → sparse', 'tandem', timed('node', [CLI, 'disk', 'convert', 'flat.vmdk', 't-out.vmdk']), du('t-out'))
row('convert 4T flat → sparse', 'qemu-img', timed('qemu-img', ['convert', '-O', 'vmdk', 'flat.vmdk', 'q-out.vmdk']), du('q-out'))
row('map 4T flat', 'tandem', timed('node', [CLI, 'disk', 'map', '--json', 'flat.vmdk']))
row('map 4T flat', 'qemu-img', timed('qemu-img', ['map', '--output=json', 'flat.vmdk']))
row('node --version (start-up)', 'node', timed('node', ['--version']))
row('tandem --help (start-up)', 'tandem', timed('node', [CLI, '--help']))
clean('')
if (process.argv[2] === undefined) rmSync(DIR, { recursive: true })

const head = ['what', 'who', 'wall s', 'cpu s', 'rss MiB', 'on disk MiB']
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
for (const r of [head, ...rows]) console.log(r.map((c, i) => c.padEnd(widths[i])).join('  '))
