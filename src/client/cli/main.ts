#!/usr/bin/env node
import { Command, CommanderError } from 'commander'
import { diskCommand } from './disk.js'
import { reportError } from './errors.js'

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
  program
    .command('serve')
    .description('run the storage server (not yet available in this build)')
    .allowUnknownOption()
    .action(() =>
      run(async () => {
        process.stderr.write('tandem: serve is not available yet in this build; see `tandem --help` for the disk commands\n')
        program.outputHelp()
        return 1
      }),
    )
  return program
}

try {
  await buildProgram().parseAsync(process.argv)
} catch (e) {
  if (e instanceof CommanderError) process.exitCode = e.exitCode
  else process.exitCode = reportError(e)
}
