import { Command, CommanderError, Option } from 'commander'
import { diskCommand } from './disk.js'
import { lockCommand } from './lock.js'
import { vmCommand } from './vm.js'
import { reportError } from './errors.js'
import { loadLazy } from './lazy.js'

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
  const env = process.env
  /** An integer option from 0 to `max`, or a one-line error naming it. */
  const integer = (v: string, max: number, what: string) => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < 0 || n > max) throw new Error(`invalid ${what} '${v}' (0 to ${max})`)
    return n
  }
  const port = (v: string) => integer(v, 65535, 'port')
  program
    .command('serve')
    .description('run the storage server: datastore, REST API and metrics over HTTP, NBD exports')
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
    .addOption(
      new Option(
        '--tls <mode>',
        'NBD STARTTLS with TLS-PSK (keys in DATASTORE/.tandem/keys.psk): required (every NBD client), optional (disks with an access list need it), off (env TANDEM_TLS)',
      )
        .choices(['required', 'optional', 'off'])
        .default(env.TANDEM_TLS ?? 'optional'),
    )
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
          tls: o.tls,
        })
        await new Promise<void>((resolve) => {
          const stop = (sig: string) => {
            server.log.info({ signal: sig }, 'shutting down: finishing requests, flushing disks')
            void server.close().then(resolve, resolve)
          }
          process.once('SIGTERM', () => stop('SIGTERM'))
          process.once('SIGINT', () => stop('SIGINT'))
        })
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
