import { Command } from 'commander'
import { StorageError } from '../../disk-formats/errors.js'
import { parseUdpAddress } from '../net/address.js'
import { parseFaults } from '../net/link-faults.js'
import { loadLazy } from './lazy.js'

/** A number of seconds from `min` up to a day, as ms, or an InvalidArgument naming the option. */
export function seconds(v: string, option: string, min = 0): number {
  const n = Number(v)
  if (!(v.trim() !== '' && n >= min && n <= 86_400)) throw new StorageError('InvalidArgument', `invalid ${option} '${v}' (seconds, ${min} to 86400)`)
  return Math.round(n * 1000)
}

/** `tandem switch`: a virtual Ethernet switch on one UDP socket (src/client/net). */
export function switchCommand(run: (fn: () => Promise<number | void>) => Promise<void>): Command {
  return new Command('switch')
    .description(
      'run a virtual Ethernet switch on one UDP socket: each address:port that sends is a port, each datagram one whole Ethernet frame (14 to 2048 bytes; an empty datagram keeps a peer joined); VMs (tandem vm run --switch) and clients (tandem kv) on any host join it. ' +
        'Logs JSON lines (pino) on stdout, the first naming the bound address. SIGTERM or SIGINT: exit 0',
    )
    .option('--listen <[host:]port>', 'UDP address to listen on; port 0: any free port', '127.0.0.1:5555')
    .option('--age <seconds>', 'a peer silent this long leaves the switch; at least 15 (uplinks announce themselves every 10 s)', '30')
    .option('--max-peers <n>', 'peers at once; datagrams from more addresses are dropped', '1024')
    .option('--fault <spec>', 'faults on the link to every peer, for tests: delay=MS (order kept), loss=RATIO (0 to 1), stall (hold every frame), e.g. delay=5,loss=0.01')
    .option('--seed <n>', 'seed of the loss fault\'s draws', '1')
    .option('--no-kernel-drop', 'drop the frames to a held port (a host\'s DoS guard suspended its VM) in Node, each counted; by default the kernel drops all but a random sixteenth of them (a BPF filter on the socket) and those count 16 each')
    .option('--log-level <level>', 'fatal, error, warn, info, debug (env TANDEM_LOG_LEVEL)', process.env.TANDEM_LOG_LEVEL ?? 'info')
    .action((o) =>
      run(async () => {
        const { host, port } = parseUdpAddress(o.listen, '--listen', true)
        const ageMs = seconds(o.age, '--age', 15)
        const maxPeers = Number(o.maxPeers)
        if (!(Number.isInteger(maxPeers) && maxPeers >= 1 && maxPeers <= 65536)) throw new StorageError('InvalidArgument', `invalid --max-peers '${o.maxPeers}' (1 to 65536)`)
        const seed = Number(o.seed)
        if (!Number.isSafeInteger(seed)) throw new StorageError('InvalidArgument', `invalid --seed '${o.seed}' (an integer)`)
        const faults = o.fault !== undefined ? parseFaults(o.fault) : undefined
        const { runSwitch } = await loadLazy<typeof import('../net/run-switch.js')>('../net/run-switch.js')
        const s = await runSwitch({ host, port, ageMs, maxPeers, faults, seed, logLevel: o.logLevel, kernelDrop: o.kernelDrop !== false })
        return new Promise<number>((resolve) => {
          let stopping = false
          const stop = (signal: string) => {
            if (stopping) return
            stopping = true
            s.log.info({ signal }, 'shutting down')
            void s.close().then(() => resolve(0))
          }
          process.on('SIGTERM', () => stop('SIGTERM'))
          process.on('SIGINT', () => stop('SIGINT'))
        })
      }).then(() => process.exit()),
    )
}
