import type { Command, OptionValues } from 'commander'
import { isStorageError, StorageError } from '../../disk-formats/errors.js'
import { isApiError, requestJson } from '../api/http.js'
import type { VmInfo } from '../host/agent.js'
import { GUEST_NAMES } from '../vm/guests.js'
import { parseSize } from './size.js'
import { parseCpuPercent } from '../vm/cpu-limit.js'
import { parsePriority } from '../net/dos-guard.js'

/** `vm start`'s own exit status: the VM runs on a host (this one or another), named in the message. */
export const VM_START_BUSY = 75

/** Errors of a host's API as one line; a VM held elsewhere is VM_START_BUSY. */
async function refusedAsBusy<T>(p: Promise<T>): Promise<T | number> {
  try {
    return await p
  } catch (e) {
    if (isApiError(e) && e.status === 409 && isStorageError(e, 'Busy')) {
      process.stderr.write(`tandem: ${e.message}\n`)
      return VM_START_BUSY
    }
    throw e
  }
}

/** A pair's columns: role, lag, CPU limit, log rate ('-' for a VM alone, or a figure not known yet). */
function ftColumns(v: VmInfo): string {
  const f = v.ft
  const role = f ? (f.role ?? f.side) : '-'
  const lag = f?.lagMs != null ? `${f.lagMs.toFixed(1)}ms` : '-'
  const cpu = f?.cpuLimit != null ? `${f.cpuLimit}%` : v.cpuLimit !== null ? `${v.cpuLimit}%` : '-'
  const rate = f?.logBytesPerSecond != null ? `${(f.logBytesPerSecond / 1024).toFixed(1)}KiB/s` : '-'
  return `${role.padEnd(9)}${lag.padEnd(10)}${cpu.padEnd(6)}${rate.padEnd(13)}`
}

function table(vms: (VmInfo & { host?: string })[], withHost: boolean): string {
  let out = `${withHost ? 'HOST'.padEnd(18) : ''}${'NAME'.padEnd(18)}${'STATE'.padEnd(10)}${'PID'.padEnd(9)}${'LOCK-GEN'.padEnd(10)}${'GUEST'.padEnd(10)}${'DISK'.padEnd(16)}${'ROLE'.padEnd(9)}${'LAG'.padEnd(10)}${'CPU'.padEnd(6)}${'LOG-RATE'.padEnd(13)}STARTED\n`
  for (const v of vms) {
    const state = v.state === 'exited' || v.state === 'stopped' || v.state === 'lost' ? `${v.state}${v.exitStatus !== null ? `(${v.exitStatus})` : ''}` : v.state
    out += `${withHost ? (v.host ?? '').padEnd(18) : ''}${v.name.padEnd(18)}${state.padEnd(10)}${String(v.pid ?? '-').padEnd(9)}${String(v.generation).padEnd(10)}${v.guest.padEnd(10)}${(v.disk ?? '-').padEnd(16)}${ftColumns(v)}${v.startedAt}\n`
  }
  return out
}

/** `vm start --ft-mode …` as the request's `ft` fields (the host checks them: it names the field and its bounds). */
function ftModeBody(o: OptionValues): Record<string, unknown> {
  const ms = (v: unknown, what: string) => {
    const n = Number(v)
    if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n)) throw new StorageError('InvalidArgument', `invalid ${what} '${String(v)}' (ms)`)
    return n
  }
  return {
    mode: o.ftMode,
    ...(o.ftEpochMs !== undefined ? { epochMs: ms(o.ftEpochMs, '--ft-epoch-ms') } : {}),
    ...(o.ftDiff === false ? { diff: false } : {}),
    ...(o.ftColoTimeoutMs !== undefined ? { coloTimeoutMs: ms(o.ftColoTimeoutMs, '--ft-colo-timeout-ms') } : {}),
    ...(o.ftColoCheckpointMs !== undefined ? { coloCheckpointMs: ms(o.ftColoCheckpointMs, '--ft-colo-checkpoint-ms') } : {}),
  }
}

/** `tandem vm start|ls|stop`: VMs on a `tandem host`, through its REST API. */
export function addHostVmCommands(vm: Command, run: (fn: () => Promise<number | void>) => Promise<void>): void {
  vm.command('start')
    .description('start a VM on a host (tandem host); refused while the VM runs on any host, naming it')
    .argument('<name>', 'the VM (lowercase letters, digits, . and -); it holds the lock vm/<name> while it runs')
    .requiredOption('--host <url>', 'the host\'s REST API, e.g. http://127.0.0.1:7800')
    .requiredOption('--guest <name|file>', `a committed guest (${GUEST_NAMES.join(', ')}) or an RV32 ELF file on the host`)
    .option('--disk <disk>', 'a datastore disk: the VM reaches it over iSCSI under its own name iqn.2026-11.local.tandem:vm:<name>')
    .option('--memory <size>', 'guest RAM (e.g. 64M; a multiple of 4 KiB, at most 1G)', '64M')
    .option('--net <udp:HOST:PORT>', 'join the VM\'s NIC to a virtual switch through a UDP socket on the host')
    .option('--switch <udp:HOST:PORT>', 'put the VM\'s NIC on the tandem switch there (as vm run --switch), on whichever host runs it')
    .option('--mac <mac>', 'the NIC\'s MAC address (default 02:00:00:00:00:01)')
    .option('--cpu-limit <pct>', 'run the VM at this share of one core, in percent (1 to 100; vm run --cpu-limit)')
    .option('--priority <n>', 'its priority, 0 to 1000 (default 100): the host\'s DoS guard (tandem host --dos-guard) suspends lower priorities first')
    .option('--ft <url>', 'run it as a fault-tolerant pair: the primary on --host, the backup on the host at this URL (its REST API); a NIC goes on a --switch (not --net)')
    .option('--backup-reads <disk|log>', 'with --ft: the backup reads the shared disk, or takes READ data from the primary\'s log', 'disk')
    .option('--ft-mode <mode>', 'with --ft: replay (the backup replays the primary\'s log), checkpoint (epochs of dirty pages) or colo (quasi-lockstep: outputs compared); as vm run --ft-mode', 'replay')
    .option('--ft-epoch-ms <ms>', 'with --ft-mode checkpoint: the epoch (vm run\'s default)')
    .option('--no-ft-diff', 'with --ft-mode checkpoint: send every dirty page whole')
    .option('--ft-colo-timeout-ms <ms>', 'with --ft-mode colo: an output of the primary unmatched this long resyncs the secondary (vm run\'s default)')
    .option('--ft-colo-checkpoint-ms <ms>', 'with --ft-mode colo: resync the secondary at least this often, matched or not (default: only on a mismatch)')
    .option('--json', 'print the VM as JSON')
    .addHelpText(
      'after',
      `
With --ft, --host asks the --ft host to start the backup (it answers with the backup's FT address once
it listens), then starts the primary connected to it. The two sides hold vm/<name> themselves, each
under a lockspace name of its own (<host>-vm-<name>): on losing each other exactly one wins the claim.
vm ls shows each side's role (primary, backup; after a failover live, alone or halted), lag, CPU limit
and log rate.
Exit status: 0 started; ${VM_START_BUSY} the VM runs on a host (this or another; the message names it); 1 any other error.`,
    )
    .action((name: string, o) =>
      run(async () => {
        let memory: number
        try {
          memory = parseSize(o.memory)
        } catch (e) {
          throw new StorageError('InvalidArgument', (e as Error).message)
        }
        const cpuLimit = o.cpuLimit !== undefined ? parseCpuPercent(o.cpuLimit) : undefined
        const priority = o.priority !== undefined ? parsePriority(o.priority, '--priority') : undefined
        if (o.backupReads !== 'disk' && o.backupReads !== 'log') throw new StorageError('InvalidArgument', `invalid --backup-reads '${o.backupReads}' (disk or log)`)
        const body = {
          name, guest: o.guest, memory,
          ...(o.disk ? { disk: o.disk } : {}),
          ...(o.net ? { net: o.net } : {}),
          ...(o.switch ? { switch: o.switch } : {}),
          ...(o.mac ? { mac: o.mac } : {}),
          ...(cpuLimit !== undefined ? { cpuLimit } : {}),
          ...(priority !== undefined ? { priority } : {}),
          ...(o.ft ? { ft: { host: o.ft, backupReads: o.backupReads, ...ftModeBody(o) } } : {}),
        }
        const r = await refusedAsBusy(requestJson<VmInfo>(o.host, 'POST', '/api/v1/vms', body))
        if (typeof r === 'number') return r
        if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n')
        else if (r.ft) process.stdout.write(`Started VM '${r.name}' as a ${r.ft.mode && r.ft.mode !== 'replay' ? `${r.ft.mode} ` : ''}pair: primary pid ${r.pid} here, backup on ${r.ft.peer} at ${r.ft.address} (lock vm/${r.name} generation ${r.generation}, held by ${r.ft.lockHost}${r.diskUri ? `; disk ${r.diskUri} as ${r.initiatorName}` : ''})\n`)
        else process.stdout.write(`Started VM '${r.name}' (pid ${r.pid}, lock vm/${r.name} generation ${r.generation}${r.diskUri ? `, disk ${r.diskUri} as ${r.initiatorName}` : ''})\n`)
      }),
    )
  vm.command('ls')
    .description('list the VMs of a host (a pair\'s side with its ROLE: primary, backup, live, alone or halted; LAG, CPU limit, LOG-RATE), or (--server) which VM runs on which host of a server\'s lockspace')
    .option('--host <url>', 'the host\'s REST API, e.g. http://127.0.0.1:7800')
    .option('--server <url>', 'a tandem serve: every host of its lockspace, with the VMs whose locks it holds')
    .option('--json', 'JSON output')
    .action((o) =>
      run(async () => {
        if (o.host) {
          const r = await requestJson<{ host: string; vms: VmInfo[] }>(o.host, 'GET', '/api/v1/vms')
          process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : table(r.vms, false))
          return
        }
        if (!o.server) throw new StorageError('InvalidArgument', 'give --host URL or --server URL')
        const r = await requestJson<{ hosts: { name: string; heartbeat: string; api: string | null; vms: string[] }[] }>(o.server, 'GET', '/api/v1/hosts')
        const rows = r.hosts.flatMap((h) => h.vms.map((vm) => ({ vm, host: h.name, heartbeat: h.heartbeat, api: h.api })))
        if (o.json) process.stdout.write(JSON.stringify({ vms: rows }, null, 2) + '\n')
        else process.stdout.write(`${'NAME'.padEnd(18)}${'HOST'.padEnd(18)}${'HEARTBEAT'.padEnd(11)}API\n` + rows.map((x) => `${x.vm.padEnd(18)}${x.host.padEnd(18)}${x.heartbeat.padEnd(11)}${x.api ?? '-'}\n`).join(''))
      }),
    )
  vm.command('stop')
    .description('stop a VM on its host (SIGTERM, SIGKILL after 10 s) and release its lock')
    .argument('<name>', 'the VM')
    .requiredOption('--host <url>', 'the host\'s REST API, e.g. http://127.0.0.1:7800')
    .option('--json', 'print the VM\'s last state as JSON')
    .action((name: string, o) =>
      run(async () => {
        const r = await requestJson<VmInfo>(o.host, 'DELETE', `/api/v1/vms/${encodeURIComponent(name)}`)
        if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n')
        else process.stdout.write(`Stopped VM '${r.name}' (${r.state}${r.exitStatus !== null ? `, exit status ${r.exitStatus}` : ''})\n`)
      }),
    )
}
