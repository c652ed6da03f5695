import { Command } from 'commander'
import { StorageError } from '../../disk-formats/errors.js'
import { loadLazy } from './lazy.js'

/** `tandem host`: the host agent (src/client/host), loaded when the command runs. */
export function hostCommand(run: (fn: () => Promise<number | void>) => Promise<void>): Command {
  const env = process.env
  return new Command('host')
    .description(
      'run a host agent: join the server\'s lockspace over iSCSI under this host\'s name, run VMs (tandem vm start|ls|stop --host URL) each under the lock vm/<name> and the host\'s lease (a fault-tolerant pair\'s sides, vm start --ft, hold vm/<name> themselves, each under a lockspace name of its own, <host>-vm-<name>), serve a REST API and /metrics. ' +
        'SIGTERM or SIGINT: stop the VMs (SIGTERM, then SIGKILL after 10 s), release their locks, leave the lockspace, exit 0',
    )
    .requiredOption('--name <name>', 'this host\'s name in the lockspace (lowercase letters, digits, . and -; its iSCSI name for the lockspace is iqn.2026-11.local.tandem:host:<name>)')
    .requiredOption('--server <url>', 'the tandem serve REST API, e.g. http://127.0.0.1:8080')
    .option('--iscsi <host:port>', 'the server\'s iSCSI portal as this host reaches it (default: the one the server advertises)')
    .option('--listen <addr>', 'address of this host\'s REST API (env TANDEM_HOST_LISTEN)', env.TANDEM_HOST_LISTEN ?? '127.0.0.1')
    .option('--api-port <port>', 'port of this host\'s REST API; 0: any free port (env TANDEM_HOST_API_PORT)', env.TANDEM_HOST_API_PORT ?? '7800')
    .option('--ft-listen <addr>', 'address the FT channel of a pair\'s backup run here listens on, each on a free port (default: --listen)')
    .option('--dos-guard <mode>', 'off; monitor: meter each plain VM\'s port on its --switch (the host relays it) and record floods; on: also suspend flooded VMs, lowest --priority first, and resume them after a quiet cooldown (README "DoS guard")', 'off')
    .option('--dos-bounds <spec>', 'the guard\'s bounds over its defaults, KEY=VALUE,...: smallPpsHigh=2000, replyRatioLow=0.5, smallPpsMax=6000, ppsHigh=50000, bpsHigh=100000000, holdMs=20, cooldownMs=2000, maxSuspended (default: all VMs but one)')
    .option('--fault-injection', 'allow run-time faults on this host through PUT /api/v1/faults: a clock jump ({"clock": {"offsetMs": N}}: the host\'s and its VMs\' wall clock N ms off; leases are on monotonic time); for tests and tandem cluster', false)
    .option('--log-level <level>', 'fatal, error, warn, info, debug (env TANDEM_LOG_LEVEL)', env.TANDEM_LOG_LEVEL ?? 'info')
    .action((o) =>
      run(async () => {
        const port = Number(o.apiPort)
        if (!Number.isInteger(port) || port < 0 || port > 65535) throw new StorageError('InvalidArgument', `invalid port '${o.apiPort}' (0 to 65535)`)
        if (o.ftListen !== undefined && !/^(\[[^\]\s]+\]|[^\s/[\]]+)$/.test(o.ftListen)) throw new StorageError('InvalidArgument', `invalid --ft-listen '${o.ftListen}' (an address, e.g. 127.0.0.1)`)
        if (o.iscsi !== undefined && !/^(\[[^\]]+\]|[^:/\s]+):\d{1,5}$/.test(o.iscsi)) throw new StorageError('InvalidArgument', `invalid --iscsi '${o.iscsi}' (HOST:PORT, e.g. 127.0.0.1:3260)`)
        if (!['off', 'monitor', 'on'].includes(o.dosGuard)) throw new StorageError('InvalidArgument', `invalid --dos-guard '${o.dosGuard}' (off, monitor or on)`)
        const { parseBounds } = await loadLazy<typeof import('../net/dos-guard.js')>('../net/dos-guard.js')
        const bounds = parseBounds(o.dosBounds ?? '', '--dos-bounds')
        const dos = o.dosGuard === 'off' ? undefined : { mode: o.dosGuard as 'monitor' | 'on', bounds }
        const { runHost } = await loadLazy<typeof import('../host/run-host.js')>('../host/run-host.js')
        const h = await runHost({ name: o.name, server: o.server, iscsi: o.iscsi, listen: o.listen, apiPort: port, ftListen: o.ftListen, logLevel: o.logLevel, tandem: [process.execPath, process.argv[1]], dos, faultInjection: o.faultInjection === true })
        return new Promise<number>((resolve) => {
          let stopping = false
          const stop = (sig: string) => {
            if (stopping) return
            stopping = true
            h.log.info({ signal: sig }, 'shutting down: stopping VMs, leaving the lockspace')
            void h.close().then(
              () => resolve(0),
              (e: Error) => {
                h.log.error({ err: e.message }, 'shutdown failed')
                resolve(1)
              },
            )
          }
          process.on('SIGTERM', () => stop('SIGTERM'))
          process.on('SIGINT', () => stop('SIGINT'))
        })
      }).then(() => process.exit()),
    )
}
