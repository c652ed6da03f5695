import { vmIqn } from './names.js'
import { ftModeArgs, type FtModeOptions } from '../ft/mode-options.js'

/** What a host runs: one VM, its disk already resolved to an iSCSI URI by the server. */
export interface VmLaunch {
  name: string
  guest: string
  /** guest RAM in bytes */
  memory: number
  /** iscsi://PORTAL/IQN/LUN of the datastore disk, or none */
  diskUri?: string
  /** udp:HOST:PORT */
  net?: string
  /** udp:HOST:PORT of a tandem switch */
  switch?: string
  /** the NIC's MAC, aa:bb:cc:dd:ee:ff */
  mac?: string
  /** percent of one core */
  cpuLimit?: number
  /** its priority under a host's DoS guard (vm run reports it) */
  priority?: number
  /** the VM's control socket (checkpoints go through it) */
  control?: string
  /** run on from this checkpoint file (`vm restore`) */
  checkpoint?: string
  /** a side of a fault-tolerant pair: the child's arbiter, not the host, holds vm/<name> */
  ft?: VmFtLaunch
}

/** How a pair's side is run (`vm run --ft-primary|--ft-backup`). */
export interface VmFtLaunch {
  side: 'primary' | 'backup'
  /** primary: the backup's FT address; backup: where it listens (port 0: any) */
  address: string
  /** the lockspace the child's arbiter joins (the host's own) */
  lockspace: string
  /** the child's own host name there (ftHostName) */
  host: string
  backupReads: 'disk' | 'log'
  /** the pair's mode and its options (a colo secondary needs `colo`; a backup otherwise follows its primary's HELLO) */
  mode: FtModeOptions
}

/**
 * The `tandem vm run` arguments of a VM the host starts — the one place that says how a VM's
 * child process is invoked. The disk is reached by iSCSI pass-through under the VM's own
 * initiator name (`--initiator-name`), never the host's.
 */
export function vmRunArgs(vm: VmLaunch): string[] {
  // --option=value: a value that starts with '-' is never taken for an option
  // a restore takes its memory size (and, unless given, its guest) from the checkpoint
  const args = vm.checkpoint ? ['vm', 'restore', ...(vm.guest ? [`--guest=${vm.guest}`] : [])] : ['vm', 'run', `--guest=${vm.guest}`, `--memory=${vm.memory}`]
  if (vm.diskUri) args.push(`--disk=${vm.diskUri}`, `--initiator-name=${vmIqn(vm.name)}`)
  if (vm.net) args.push(`--net=${vm.net}`)
  if (vm.switch) args.push(`--switch=${vm.switch}`)
  if (vm.mac) args.push(`--mac=${vm.mac}`)
  if (vm.ft) args.push(`--name=${vm.name}`, `--ft-${vm.ft.side}=${vm.ft.address}`, `--ft-lockspace=${vm.ft.lockspace}`, `--ft-host=${vm.ft.host}`, `--backup-reads=${vm.ft.backupReads}`, ...ftModeArgs(vm.ft.mode))
  if (vm.cpuLimit !== undefined) args.push(`--cpu-limit=${vm.cpuLimit}`)
  if (vm.priority !== undefined) args.push(`--priority=${vm.priority}`)
  if (vm.control) args.push(`--control=${vm.control}`)
  if (vm.checkpoint) args.push('--', vm.checkpoint)
  return args
}
