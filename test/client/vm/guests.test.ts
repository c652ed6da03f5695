import t from 'tap'
import { join } from 'node:path'
import { needs, run, runOk, tmp, tandem, ROOT } from '../../helpers/peers.js'

const SRC = join(ROOT, 'guests', 'src')

/** The guest's console through `tandem vm run --json` (console on stderr, summary on stdout). */
async function vmConsole(guest: string): Promise<{ console: string; summary: Record<string, unknown> }> {
  const r = tandem(['vm', 'run', '--guest', guest, '--json'])
  return { console: r.stderr, summary: JSON.parse(r.stdout) as Record<string, unknown> }
}

// guest, its source, its build's defines (scripts/build-guests.sh)
const SAME_SOURCE: [string, string, string[]][] = [
  ['cpu', 'cpu', []],
  ['memdirty', 'memdirty', []],
  ['cpu10', 'cpu', ['-DCPU_ROUNDS=10']],
]
for (const [guest, source, defines] of SAME_SOURCE) {
  t.test(`${guest}: the same C source built for the host prints the same lines`, needs('gcc'), async (t) => {
    const exe = join(tmp(t), `${guest}-host`)
    await runOk('gcc', ['-O2', ...defines, '-I', SRC, '-o', exe, join(SRC, `${source}.c`), join(SRC, 'host_rt.c')])
    const host = await runOk(exe, [])
    const vm = await vmConsole(guest)
    t.equal(vm.summary.exitCode, 0)
    t.ok(host.length > 20, `host output: ${host.trim().split('\n')[0]}`)
    t.equal(vm.console, host, 'identical console output')
    if (source === 'cpu') t.equal(vm.console.match(/^cpu: done$/gm)?.length, guest === 'cpu10' ? 10 : 1, 'rounds of the work')
  })

  t.test(`${guest}: the same image on qemu-system-riscv32 (virt) prints the same lines`, needs('qemu-system-riscv32'), async (t) => {
    const q = await run('qemu-system-riscv32', ['-machine', 'virt', '-bios', 'none', '-m', '64M', '-nographic', '-monitor', 'none', '-serial', 'stdio', '-kernel', join(ROOT, 'guests', `${guest}.elf`)], { timeout: 60_000 })
    t.equal(q.status, 0, 'qemu exits through the test finisher with status 0')
    const vm = await vmConsole(guest)
    t.equal(vm.console, q.stdout.replace(/\r\n/g, '\n'), 'identical console output')
  })
}
