import { Command, CommanderError, Option } from 'commander'
import { diskCommand } from './disk.js'
import { lockCommand } from './lock.js'
import { vmCommand } from './vm.js'
import { hostCommand } from './host.js'
import { switchCommand } from './switch.js'
import { kvCommand } from './kv.js'
import { snapshotCommand } from './snapshot.js'
import { clusterCommand } from './cluster.js'
import { reportError } from './errors.js'
import { loadLazy } from './lazy.js'
import { SERVE_DEFAULTS } from '../../server/serve-defaults.js'

/** Runs an action; its number (or 0) becomes the exit status; errors become one line on stderr. */
async function run(fn: () => Promise<number | void>): Promise<void> {
  try {
    process.exitCode = (await fn()) ?? 0
  } catch (e) {
    process.exitCode = reportError(e)
  }
}

export function buildProgram(): Command {
  const program = new Command('tandem')
    .description('Tandem: clustered storage for virtual machines — VMDK disks, NBD and iSCSI exports, on-disk locks')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
  program.addCommand(diskCommand(run))
  program.addCommand(lockCommand(run))
  program.addCommand(vmCommand(run))
  program.addCommand(hostCommand(run))
  program.addCommand(switchCommand(run))
  program.addCommand(kvCommand(run))
  program.addCommand(snapshotCommand(run))
  program.addCommand(clusterCommand(run))
  const env = process.env
  /** An integer option from 0 to `max`, or a one-line error naming it. */
  const integer = (v: string, max: number, what: string) => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < 0 || n > max) throw new Error(`invalid ${what} '${v}' (0 to ${max})`)
    return n
  }
  const port = (v: string) => integer(v, 65535, 'port')
  /** Seconds, `500ms` or `10s`, as milliseconds (up to a day), or a one-line error naming the option. */
  const duration = (v: string, what: string) => {
    const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(v.trim())
    const ms = m ? Math.round(Number(m[1]) * (m[2] === 'ms' ? 1 : 1000)) : NaN
    if (!(ms >= 0 && ms <= 86_400_000)) throw new Error(`invalid ${what} '${v}' (seconds, e.g. 10, 10s or 500ms)`)
    return ms
  }
  program
    .command('serve')
    .description(
      'run the storage server: datastore, REST API and metrics over HTTP, NBD exports, iSCSI targets. ' +
        'SIGTERM or SIGINT: stop accepting, give clients 4 s to finish their requests, close them, flush every disk, exit 0; a second signal skips the wait (disks are still flushed)',
    )
    .option('--datastore <dir>', 'datastore folder, created if missing (env TANDEM_DATASTORE)', env.TANDEM_DATASTORE ?? './datastore')
    .option('--listen <addr>', 'address to listen on (env TANDEM_LISTEN)', env.TANDEM_LISTEN ?? '127.0.0.1')
    .option('--http-port <port>', 'REST API and /metrics (env TANDEM_HTTP_PORT)', env.TANDEM_HTTP_PORT ?? '8080')
    .option('--nbd-port <port>', 'NBD exports (env TANDEM_NBD_PORT)', env.TANDEM_NBD_PORT ?? '10809')
    .option('--iscsi-port <port>', 'iSCSI target (env TANDEM_ISCSI_PORT)', env.TANDEM_ISCSI_PORT ?? '3260')
    .option('--log-level <level>', 'fatal, error, warn, info, debug (env TANDEM_LOG_LEVEL)', env.TANDEM_LOG_LEVEL ?? 'info')
    .option(
      '--poll-us <us>',
      'after a reply that leaves a connection idle, keep polling for its next request this many µs instead of sleeping (faster queue-depth-1 clients, one busy core while they run); 0 turns it off (env TANDEM_POLL_US)',
      env.TANDEM_POLL_US ?? '200',
    )
    .option(
      '--max-connections <n>',
      'connections at once per protocol (NBD, iSCSI, HTTP); over it a new NBD or HTTP connection is closed at once and an iSCSI login is rejected "out of resources"; 0: no cap (env TANDEM_MAX_CONNECTIONS)',
      env.TANDEM_MAX_CONNECTIONS ?? String(SERVE_DEFAULTS.maxConnections),
    )
    .option(
      '--handshake-limit <seconds>',
      'time an NBD client has to finish its handshake, an iSCSI initiator its login, before it is disconnected (10, 10s, 500ms); 0: no limit (env TANDEM_HANDSHAKE_LIMIT)',
      env.TANDEM_HANDSHAKE_LIMIT ?? String(SERVE_DEFAULTS.handshakeLimitMs / 1000),
    )
    .addOption(
      new Option(
        '--tls <mode>',
        'NBD STARTTLS with TLS-PSK (keys in DATASTORE/.tandem/keys.psk): required (every NBD client), optional (disks with an access list need it), off (env TANDEM_TLS)',
      )
        .choices(['required', 'optional', 'off'])
        .default(env.TANDEM_TLS ?? 'optional'),
    )
    .option('--api-token-file <file>', 'the REST API\'s bearer token, created (mode 0600) if missing; needed by every mutating request, and by every request when --listen is not loopback (env TANDEM_API_TOKEN_FILE; default DATASTORE/.tandem/api-token)', env.TANDEM_API_TOKEN_FILE)
    .option('--fault-injection', 'allow disk faults at run time through PUT /api/v1/faults (delay, error, stall per disk; for tests and tandem cluster): never on a server holding data you care about', false)
    .action((o) =>
      run(async () => {
        const { serve } = await loadLazy<typeof import('../../server/serve.js')>('../../server/serve.js')
        const server = await serve({
          datastore: o.datastore,
          listen: o.listen,
          httpPort: port(o.httpPort),
          nbdPort: port(o.nbdPort),
          iscsiPort: port(o.iscsiPort),
          logLevel: o.logLevel,
          pollUs: integer(o.pollUs, 1_000_000, '--poll-us'),
          maxConnections: integer(o.maxConnections, 1_000_000, '--max-connections'),
          handshakeLimitMs: duration(o.handshakeLimit, '--handshake-limit'),
          tls: o.tls,
          apiTokenFile: o.apiTokenFile,
          faultInjection: o.faultInjection === true,
        })
        return new Promise<number>((resolve) => {
          let stopping = false
          const stop = (sig: string) => {
            if (stopping) {
              server.log.info({ signal: sig }, 'second signal: closing every connection now, flushing disks')
              return server.hurry()
            }
            stopping = true
            server.log.info({ signal: sig }, 'shutting down: finishing requests, flushing disks')
            void server.close().then(
              () => resolve(0),
              (e: unknown) => resolve(reportError(e)),
            )
          }
          process.on('SIGTERM', () => stop('SIGTERM'))
          process.on('SIGINT', () => stop('SIGINT'))
        })
      }).then(() => {
        // stopped (or failed to start): nothing left may keep the process up; log lines and
        // stderr are written synchronously, so nothing is lost
        process.exit()
      }),
    )
  return program
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv)
  } catch (e) {
    if (e instanceof CommanderError) process.exitCode = e.exitCode
    else process.exitCode = reportError(e)
  }
}
