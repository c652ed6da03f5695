import { Command, type OptionValues } from 'commander'
import { StorageError } from '../../disk-formats/index.js'
import { ANONYMOUS_VM_IQN, VM_IQN_PREFIX, checkInitiatorName, logicalUnitPath, nexusName, vmInitiatorName, vmIsid, type ScsiPath } from '../vm/scsi-path.js'
import { openVmDisk, openWonVmDisk } from '../vm/vm-disk.js'
import { parseCpuPercent } from '../vm/cpu-limit.js'
import { parsePriority } from '../net/dos-guard.js'
import { ENGINES, type Engine } from '../vm/engines.js'
import { loadLazy } from './lazy.js'
import { GUEST_NAMES } from '../vm/guests.js'
import { parseSize } from './size.js'
import { addHostVmCommands } from './vm-host.js'
import { addCheckpointCommand } from './vm-checkpoint.js'
import { serverDiskSwitch } from '../checkpoint/server-switch.js'
import { requestJson } from '../api/http.js'
import type { VmInfo } from '../host/agent.js'
import { resolve } from 'node:path'
import { parseUdpAddress } from '../net/address.js'
import { hostname } from 'node:os'
import { parseHostPort } from '../ft/address.js'
import { COLO_CHECKPOINT, COLO_TIMEOUT, EPOCH_MS, FT_MODES } from '../ft/mode-options.js'
import type { RestoreSummary } from '../ft/live-side.js'

/** Exit statuses of `tandem vm run` besides the guest's own exit code. */
export const VM_EXIT = { FT_HALTED: 123, LIMIT: 124, FAULT: 125, HALT: 126, REPLAY: 127, STOPPED: 130 } as const

export function vmCommand(run: (fn: () => Promise<number | void>) => Promise<void>): Command {
  const vm = new Command('vm').description('lightweight deterministic VMs (RV32IM) with a SCSI disk, record and replay')
  const runCmd = vm.command('run')
    .description('run a guest to its end; print its console, then a summary')
    .requiredOption('--guest <name|file>', `a committed guest (${GUEST_NAMES.join(', ')}) or an RV32 ELF file`)
    .option('--memory <size>', 'guest RAM (e.g. 64M; a multiple of 4 KiB, at most 1G)', '64M')
  runOptions(runCmd)
    .option('--ft-primary <host:port>', 'run as the primary of a fault-tolerant pair: stream the event log to the backup listening there (see --ft-backup)')
    .option('--ft-backup <host:port>', 'run as the backup of a fault-tolerant pair: listen here for the primary (port 0: any; the port is printed), follow its log, and take over if it is lost')
    .option('--backup-reads <disk|log>', "where the backup's READ data comes from: the shared disk (its writes are never issued) or the primary's log", 'disk')
    .option('--ft-lockspace <path|uri>', "the lockspace holding the VM's lock vm/<name> (a file, or iscsi://…/lockspace): on losing each other both sides claim it by one compare-and-write, exactly one wins and the other halts")
    .option('--ft-host <name>', "this side's host name in the lockspace (default: <hostname>-primary or -backup)")
    .option('--ft-loss-ms <ms>', 'silence on the FT channel that counts as losing the peer (env TANDEM_FT_LOSS_MS: a host agent\'s pairs inherit it)', process.env.TANDEM_FT_LOSS_MS ?? '300')
    .option('--ft-mode <mode>', 'replay: the backup replays the primary\'s event log; checkpoint: epochs of dirty pages and device state, outputs held until the backup acknowledges their epoch; colo: quasi-lockstep, the secondary runs on the same inputs and the primary releases each output once the secondary\'s is equal (a mismatch resyncs it). A backup follows its primary\'s replay or checkpoint; a colo secondary is started with --ft-mode colo', 'replay')
    .option('--ft-colo-timeout-ms <ms>', 'colo: an output of the primary unmatched this long resyncs the secondary', String(COLO_TIMEOUT.default))
    .option('--ft-colo-checkpoint-ms <ms>', `colo primary: resync the secondary at least this often, matched or not (QEMU COLO's x-checkpoint-delay; ${COLO_CHECKPOINT.min} to ${COLO_CHECKPOINT.max}; default: only on a mismatch)`)
    .option('--ft-epoch-ms <ms>', `checkpoint mode: the epoch, in ms (${EPOCH_MS.min} to ${EPOCH_MS.max})`, String(EPOCH_MS.default))
    .option('--no-lag-control', "primary: leave its CPU limit alone (the lag control lowers it while the backup falls behind)")
    .option('--no-ft-diff', 'checkpoint mode: send every dirty page whole (no diffs for the pages the backup names)')
    .action((o) => run(() => runAction(o)))
  const restoreCmd = vm.command('restore')
    .description('run a VM on from a checkpoint file (tandem vm checkpoint): its state and memory as they were, then as vm run')
    .argument('<file>', 'the checkpoint file')
    .option('--guest <name|file>', 'the guest image (default: the committed guest whose image the checkpoint names)')
  runOptions(restoreCmd)
    .option('--host <url>', 'restore on this host (tandem host) as VM --name: --disk is then a datastore disk, the file a path on the host')
    .action((file: string, o) => run(() => (o.host ? restoreOnHost(file, o) : runAction({ ...o, restore: file }))))
  addCheckpointCommand(vm, run)
  vm.command('switchover')
    .description("planned switchover of a fault-tolerant pair: the primary stops between slices, waits until its backup has acknowledged everything, hands the VM over (the backup claims its lock and goes on live at that instruction) and exits 0")
    .requiredOption('--control <path>', "the primary's control socket (vm run --control)")
    .option('--json', 'print the answer as JSON')
    .action((o) =>
      run(async () => {
        const r = await requestJson<{ instructions: number }>(`unix:${resolve(o.control)}`, 'POST', '/api/v1/vm/ft/handover', {})
        process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `Handed over to the backup at instruction ${r.instructions}\n`)
        return 0
      }),
    )
  vm.command('ft-restore')
    .description('redundancy restore of a fault-tolerant VM running alone (its backup lost, or a backup gone live): a new backup waiting at HOST:PORT (tandem vm run --ft-backup HOST:PORT) starts from a live checkpoint of the running VM and follows it; its outputs wait for the new backup\'s acks from then on. On hosts: NAME --host URL --ft URL2, the host running the VM has the host at URL2 start the new backup')
    .argument('[name]', 'with --host: the VM')
    .option('--control <path>', "the running VM's control socket (vm run --control)")
    .option('--backup <host:port>', 'with --control: where the new backup listens')
    .option('--host <url>', 'the host (tandem host) that runs the VM alone')
    .option('--ft <url>', 'with --host: the host to run the new backup (its REST API)')
    .option('--json', 'print the answer as JSON')
    .action((name: string | undefined, o) =>
      run(async () => {
        let r: RestoreSummary
        if (o.host !== undefined || o.ft !== undefined || name !== undefined) {
          if (!name || !o.host || !o.ft || o.control || o.backup) throw new StorageError('InvalidArgument', 'give NAME --host URL --ft URL2 (a VM on a host), or --control PATH --backup HOST:PORT (a vm run)')
          r = (await requestJson<VmInfo & { restore: RestoreSummary }>(o.host, 'POST', `/api/v1/vms/${encodeURIComponent(name)}/ft/restore`, { host: o.ft }, { timeoutMs: 600_000 })).restore
        } else {
          if (!o.control || !o.backup) throw new StorageError('InvalidArgument', 'give --control PATH --backup HOST:PORT (a vm run), or NAME --host URL --ft URL2 (a VM on a host)')
          const backup = parseHostPort(o.backup, '--backup')
          r = await requestJson<RestoreSummary>(`unix:${resolve(o.control)}`, 'POST', '/api/v1/vm/ft/restore', { backup: `${backup.host}:${backup.port}` }, { timeoutMs: 600_000 })
        }
        process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `Protected again by the backup at ${r.backup} from instruction ${r.instructions} (pre-copy ${r.precopyPages} pages in ${r.precopyRounds} rounds, pause ${r.pauseMs.toFixed(2)} ms, then ${r.pages} dirty pages; outputs held ${Math.round(r.protectedMs)} ms from the pause to its first ACK)\n`)
        return 0
      }),
    )
  addHostVmCommands(vm, run)
  return vm
}

/** `vm restore F --host URL --name N`: the host starts the VM from the checkpoint, holding vm/<name>. */
async function restoreOnHost(file: string, o: OptionValues): Promise<number> {
  if (!o.name) throw new StorageError('InvalidArgument', 'give the VM\'s --name with --host')
  const body = { name: o.name, checkpoint: resolve(file), ...(o.guest ? { guest: o.guest } : {}), ...(o.disk ? { disk: o.disk } : {}), ...(o.net ? { net: o.net } : {}), ...(o.cpuLimit !== undefined ? { cpuLimit: parseCpuPercent(o.cpuLimit) } : {}) }
  const r = await requestJson<VmInfo>(o.host, 'POST', '/api/v1/vms', body)
  if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n')
  else process.stdout.write(`Restored VM '${r.name}' from ${body.checkpoint} (pid ${r.pid}, lock vm/${r.name} generation ${r.generation}${r.diskUri ? `, disk ${r.diskUri}` : ''})\n`)
  return 0
}

/** The options `vm run` and `vm restore` share. */
function runOptions(cmd: Command): Command {
  return cmd
    .option('--disk <path|uri>', "the virtual SCSI disk: a VMDK (chain) or raw file, written in place; nbd://HOST[:PORT]/EXPORT; or iscsi://HOST[:PORT]/TARGET-IQN/LUN, where the guest's commands go to the target as they are, in a session under the VM's own initiator name")
    .option('--name <name>', `the VM's name; its iSCSI initiator name is then ${VM_IQN_PREFIX}<name>`)
    .option('--initiator-name <iqn>', `the VM's iSCSI initiator name (default ${VM_IQN_PREFIX}<name>, or ${ANONYMOUS_VM_IQN} without --name); with a fixed ISID derived from it, so its reservations hold from any host`)
    .option('--record <log>', 'write every non-deterministic input to this event log')
    .option('--replay <log>', 'replay a recorded run from its event log (the disk must hold what it held when recording began)')
    .option('--follow', 'with --replay: the log is still being written (by a recording running now); read it as it grows, to its end')
    .option('--max-instructions <n>', 'stop after this many instructions')
    .option('--engine <engine>', 'how the hart executes: jit (blocks translated to JavaScript) or interp (the reference interpreter); both count instructions exactly, so a log recorded under one replays under the other', 'jit')
    .option('--cpu-limit <pct>', 'run the VM at this share of one core, in percent (1 to 100): it runs for that share of every 20 ms and sleeps the rest; waiting for an interrupt counts as idle')
    .option('--net <udp:HOST:PORT>', 'join the NIC to a virtual switch with a UDP socket listening here; each datagram is one Ethernet frame (as qemu -netdev socket,udp=)')
    .option('--switch <udp:HOST:PORT>', 'join the NIC to a tandem switch there, from a socket of its own (not with --net)')
    .option('--mac <mac>', "the NIC's MAC address", '02:00:00:00:00:01')
    .option('--priority <n>', 'the VM\'s priority, 0 to 1000 (default 100): a host\'s DoS guard suspends lower priorities first; shown in the control socket\'s status')
    .option('--json', 'print the console on stderr and one JSON summary on stdout')
    .addHelpText(
      'after',
      `
The summary: instructions, seconds, CPU seconds (user + system), MIPS, exit code, a SHA-256 of memory, registers and device
state, and a SHA-256 of the console output. A replay ends with the same hashes as its recording.
Exit status: the guest's own exit code; ${VM_EXIT.LIMIT} at --max-instructions; ${VM_EXIT.FAULT} for a trap the
guest does not handle; ${VM_EXIT.HALT} when it waits for an interrupt that cannot come; ${VM_EXIT.REPLAY} when a replay
diverges from its log or the log is damaged; ${VM_EXIT.STOPPED} when stopped by SIGINT/SIGTERM (the
summary is printed and a recording's log written; its replay stops at the same instruction).`,
    )
    .option('--control <path>', 'serve a control socket here (HTTP/JSON on a Unix socket, mode 0600): status, pause, resume, checkpoint; tandem vm checkpoint --control PATH uses it')
}

/** `vm run` and `vm restore`: a guest to its end. */
async function runAction(o: OptionValues): Promise<number> {
  const { runVm } = await loadLazy<typeof import('../vm/run.js')>('../vm/run.js')
  if (o.record && o.replay) throw new StorageError('InvalidArgument', '--record and --replay cannot be used together')
  if (o.follow && !o.replay) throw new StorageError('InvalidArgument', '--follow needs --replay')
  const memory = o.restore ? 0 : parseSize(o.memory) // a restore takes the checkpoint's
  let max: number | undefined
  if (o.maxInstructions !== undefined) {
    max = Number(o.maxInstructions)
    if (!Number.isSafeInteger(max) || max <= 0) throw new StorageError('InvalidArgument', `invalid instruction count '${o.maxInstructions}'`)
  }
  const cpuLimit = o.cpuLimit !== undefined ? parseCpuPercent(o.cpuLimit) : undefined
  const priority = o.priority !== undefined ? parsePriority(o.priority, '--priority') : undefined
  if (!(ENGINES as readonly string[]).includes(o.engine)) throw new StorageError('InvalidArgument', `invalid --engine '${o.engine}' (${ENGINES.join(' or ')})`)
  if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(o.mac)) throw new StorageError('InvalidArgument', `invalid MAC address '${o.mac}' (six hex bytes, e.g. 02:00:00:00:00:01)`)
  const mac = Buffer.from(o.mac.split(':').map((x: string) => parseInt(x, 16)))
  let udp: { close(): void } | undefined
  let port
  if (o.net && o.switch) throw new StorageError('InvalidArgument', '--net and --switch cannot be used together')
  const ft = ftOptions(o)
  if (o.switch) {
    const to = parseUdpAddress(o.switch, '--switch')
    const { UdpUplink } = await loadLazy<typeof import('../net/udp-uplink.js')>('../net/udp-uplink.js')
    // a backup's uplink draws none of the VM's frames until it goes live (then it announces the MAC)
    udp = port = await UdpUplink.join(to, { mac: ft?.role === 'backup' ? undefined : mac })
  }
  if (o.net) {
    const m = /^udp:(.+):(\d+)$/.exec(o.net)
    if (!m || Number(m[2]) > 65535) throw new StorageError('InvalidArgument', `invalid --net '${o.net}' (udp:HOST:PORT, e.g. udp:127.0.0.1:5555)`)
    const { VirtualSwitch, UdpPort } = await loadLazy<typeof import('../vm/net.js')>('../vm/net.js')
    const sw = new VirtualSwitch()
    port = sw.port()
    udp = await UdpPort.listen(sw, m[1].replace(/^\[|\]$/g, ''), Number(m[2])).catch((e: Error) => {
      throw new StorageError('InvalidArgument', `cannot listen on ${o.net}: ${e.message}`)
    })
  }
  const identity = checkInitiatorName(o.initiatorName ?? (o.name !== undefined ? vmInitiatorName(o.name) : ANONYMOUS_VM_IQN))
  // the two sides of a pair are two I_T nexuses of the VM's identity (ISID qualifiers 1 and 2);
  // a backup follows a local file read-only beside its writing primary, and opens it for writing at go-live
  const disk = o.disk ? await openVmDisk(o.disk, identity, ft?.role === 'backup' ? { isidQualifier: 2, follow: true } : {}) : undefined
  const out = o.json ? process.stderr : process.stdout
  let pending: number[] = []
  const flush = () => {
    if (pending.length) out.write(Buffer.from(pending))
    pending = []
  }
  // Ctrl-C / SIGTERM: stop between slices, write the log and the summary (a server guest such
  // as kvstore runs until told)
  const stop = new AbortController()
  const onSignal = () => stop.abort()
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    const cpu0 = process.cpuUsage()
    const s = await runVm({
      signal: stop.signal,
      guest: o.guest ?? '',
      memory,
      restore: o.restore,
      control: o.control,
      // a checkpoint switches a local VMDK in place, a datastore disk through its server
      diskSwitch: (req) => {
        const d = req.disk as { server?: unknown; name?: unknown } | undefined
        if (d && typeof d.server === 'string' && typeof d.name === 'string') return serverDiskSwitch(d.server, d.name)
        return disk?.switch
      },
      disk: disk?.disk,
      scsi: disk?.scsi,
      identity,
      record: o.record,
      replay: o.replay,
      follow: o.follow === true,
      maxInstructions: max,
      engine: o.engine as Engine,
      cpuLimit,
      priority,
      net: port,
      mac,
      ft: ft && ((vm) => startFtRole(ft, vm, disk?.scsi, o.disk && disk?.disk ? () => openLiveDisk(o.disk, identity) : undefined)),
      onConsole: (b) => {
        pending.push(b)
        if (b === 10 || pending.length >= 256) flush()
      },
    })
    flush()
    const cpu = process.cpuUsage(cpu0)
    const summary = {
      guest: o.guest,
      end: s.end,
      exitCode: s.exitCode,
      instructions: s.instructions,
      seconds: Number(s.seconds.toFixed(3)),
      cpuSeconds: Number(((cpu.user + cpu.system) / 1e6).toFixed(3)),
      runCpuSeconds: Number(s.cpuSeconds.toFixed(3)),
      mips: Number(s.mips.toFixed(1)),
      interrupts: s.interrupts,
      events: s.events,
      stateHash: s.stateHash,
      consoleHash: s.consoleHash,
      ...(s.message ? { message: s.message } : {}),
      ...(s.ft ? { ft: s.ft } : {}),
    }
    if (o.json) process.stdout.write(JSON.stringify(summary) + '\n')
    else {
      process.stderr.write(`tandem vm: ${s.end}${s.exitCode !== null ? ` (exit code ${s.exitCode})` : ''}: ${s.instructions} instructions in ${s.seconds.toFixed(3)} s (cpu ${summary.cpuSeconds.toFixed(3)} s), ${s.mips.toFixed(1)} MIPS, ${s.interrupts} interrupts, ${s.events} events\n`)
      if (s.message) process.stderr.write(`tandem vm: ${s.message}\n`)
      process.stderr.write(`tandem vm: state ${s.stateHash}\ntandem vm: console ${s.consoleHash}\n`)
      if (s.ft) process.stderr.write(`tandem vm: FT ${s.ft.role}, ${s.ft.outcome}${s.ft.channelEnd ? ` (channel: ${s.ft.channelEnd})` : ''}, ${s.ft.logBytes} log bytes${s.ft.takeoverMs !== undefined ? `, took over in ${s.ft.takeoverMs.toFixed(1)} ms` : ''}\n`)
    }
    if (s.ft?.outcome === 'halted') return VM_EXIT.FT_HALTED
    if (s.ft?.outcome === 'handed-over') return 0
    if (s.end === 'exit') return s.exitCode ?? 0
    return s.end === 'limit' ? VM_EXIT.LIMIT : s.end === 'fault' ? VM_EXIT.FAULT : s.end === 'halt' ? VM_EXIT.HALT : s.end === 'stopped' ? VM_EXIT.STOPPED : VM_EXIT.REPLAY
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
    // the arbiter first: it gives the disk's reservation back over the disk's own session
    await ftArbiter?.close()
    await disk?.close()
    udp?.close()
  }
}

interface FtCliOptions {
  role: 'primary' | 'backup'
  host: string
  port: number
  vm: string
  reads: 'disk' | 'log'
  lockspace: string
  hostName: string
  lossMs: number
  lagControl: boolean
  mode: 'replay' | 'checkpoint' | 'colo'
  coloTimeoutMs: number
  coloCheckpointMs?: number
  epochMs: number
  diff: boolean
}

/** `--ft-primary` / `--ft-backup` and their companions, checked. */
function ftOptions(o: OptionValues): FtCliOptions | undefined {
  if (!o.ftPrimary && !o.ftBackup) return undefined
  if (o.ftPrimary && o.ftBackup) throw new StorageError('InvalidArgument', 'a VM is the primary (--ft-primary) or the backup (--ft-backup) of its pair, not both')
  const role = o.ftPrimary ? 'primary' : 'backup'
  const addr = String(o.ftPrimary ?? o.ftBackup)
  const m = /^(.+):(\d+)$/.exec(addr)
  if (!m || Number(m[2]) > 65535 || (role === 'primary' && Number(m[2]) === 0)) throw new StorageError('InvalidArgument', `invalid --ft-${role} '${addr}' (HOST:PORT, e.g. 127.0.0.1:7700)`)
  if (o.name === undefined) throw new StorageError('InvalidArgument', `--ft-${role} needs the VM's --name (its lock is vm/<name>)`)
  if (!o.ftLockspace) throw new StorageError('InvalidArgument', `--ft-${role} needs --ft-lockspace: the pair decides who goes live by a compare-and-write on the VM's lock there`)
  if (o.backupReads !== 'disk' && o.backupReads !== 'log') throw new StorageError('InvalidArgument', `invalid --backup-reads '${o.backupReads}' (disk or log)`)
  const lossMs = Number(o.ftLossMs)
  if (!Number.isFinite(lossMs) || lossMs < 20 || lossMs > 60_000) throw new StorageError('InvalidArgument', `invalid --ft-loss-ms '${o.ftLossMs}' (20 to 60000)`)
  if (!FT_MODES.includes(o.ftMode)) throw new StorageError('InvalidArgument', `invalid --ft-mode '${o.ftMode}' (replay, checkpoint or colo)`)
  const coloTimeoutMs = Number(o.ftColoTimeoutMs)
  if (!Number.isFinite(coloTimeoutMs) || coloTimeoutMs < COLO_TIMEOUT.min || coloTimeoutMs > COLO_TIMEOUT.max) throw new StorageError('InvalidArgument', `invalid --ft-colo-timeout-ms '${o.ftColoTimeoutMs}' (${COLO_TIMEOUT.min} to ${COLO_TIMEOUT.max})`)
  const coloCheckpointMs = o.ftColoCheckpointMs === undefined ? undefined : Number(o.ftColoCheckpointMs)
  if (coloCheckpointMs !== undefined && (!Number.isFinite(coloCheckpointMs) || coloCheckpointMs < COLO_CHECKPOINT.min || coloCheckpointMs > COLO_CHECKPOINT.max)) throw new StorageError('InvalidArgument', `invalid --ft-colo-checkpoint-ms '${o.ftColoCheckpointMs}' (${COLO_CHECKPOINT.min} to ${COLO_CHECKPOINT.max})`)
  if (o.record || o.replay || o.restore) throw new StorageError('InvalidArgument', 'a fault-tolerant pair records and replays over its channel: no --record, --replay or restore')
  const epochMs = Number(o.ftEpochMs)
  if (!Number.isFinite(epochMs) || epochMs < EPOCH_MS.min || epochMs > EPOCH_MS.max) throw new StorageError('InvalidArgument', `invalid --ft-epoch-ms '${o.ftEpochMs}' (${EPOCH_MS.min} to ${EPOCH_MS.max})`)
  return { role, host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]), vm: o.name, reads: o.backupReads, lockspace: o.ftLockspace, hostName: o.ftHost ?? `${hostname()}-${role}`, lossMs, lagControl: o.lagControl !== false, mode: o.ftMode, coloTimeoutMs, ...(coloCheckpointMs !== undefined ? { coloCheckpointMs } : {}), epochMs, diff: o.ftDiff !== false }
}

let ftArbiter: { close(): Promise<void> } | undefined

/** The pair role of `vm run --ft-*`: its arbiter on the lockspace, then the channel. */
async function startFtRole(f: FtCliOptions, vm: Parameters<NonNullable<import('../vm/run.js').VmRunOptions['ft']>>[0], scsi: ScsiPath | undefined, liveDisk?: () => Promise<ScsiPath>) {
  const { lockArbiter, ftPrimary, ftBackup, coloPrimary, coloSecondary } = await loadLazy<typeof import('../ft/index.js')>('../ft/index.js')
  const log = (msg: string) => process.stderr.write(`tandem vm: ${msg}\n`)
  const arbiter = await lockArbiter({ lockspace: f.lockspace, host: f.hostName, vm: f.vm, role: f.role, fenceDisk: scsi, log })
  ftArbiter = arbiter
  const base = { role: f.role, host: f.host, port: f.port, vm: f.vm, reads: f.reads, arbiter, lossMs: f.lossMs, lagControl: f.lagControl, log }
  if (f.mode === 'colo') {
    const colo = { ...base, colo: { timeoutMs: f.coloTimeoutMs, checkpointMs: f.coloCheckpointMs } }
    if (f.role === 'primary') return coloPrimary(colo, vm)
    return coloSecondary(colo, { ...vm, liveDisk, onListening: (port) => log(`FT backup listening on ${f.host}:${port}`) })
  }
  const role = { ...base, mode: f.mode, epochMs: f.epochMs, diff: f.diff }
  if (f.role === 'primary') return ftPrimary(role, vm)
  return ftBackup(role, { ...vm, liveDisk, onListening: (port) => log(`FT backup listening on ${f.host}:${port}`) })
}

/** A backup's local disk file, opened for writing at go-live (its image lock taken then, once the lost primary's is gone), as the VM's LU. */
async function openLiveDisk(spec: string, identity: string): Promise<ScsiPath> {
  const d = await openWonVmDisk(spec, identity, { isidQualifier: 2 })
  if (d.scsi) return d.scsi
  const { LogicalUnit } = await import('../../server/scsi/index.js')
  return logicalUnitPath(new LogicalUnit(d.disk, { serial: 'tandem-vm-disk' }), nexusName(identity, vmIsid(identity, 2)))
}
