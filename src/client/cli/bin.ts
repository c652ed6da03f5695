/**
 * The CLI's entry. The build bundles it, with program.ts and everything the short-lived commands
 * (`disk`, `lock`, `vm`) load, into one CommonJS file, dist/src/client/cli/cli.cjs
 * (scripts/build-cli.ts), which the `tandem` executable (tandem.cts) runs. The long-running
 * parts (`serve`, `vm run`, the lock manager) stay separate modules, imported when their
 * command runs.
 */
import { followWallOffset, WALL_OFFSET_ENV } from '../host/wall-clock.js'
import { main } from './program.js'

/**
 * A reader that goes away (`tandem disk map … | head`) ends the output, not the command (and
 * never in a stack trace): what it would have printed is dropped. Any other error writing the
 * output is one line on stderr and exit 1.
 */
function dropOutputWhenReaderGoes(stream: NodeJS.WriteStream, name: string): void {
  stream.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') {
      stream.write = (() => true) as typeof stream.write
      return
    }
    if (stream !== process.stderr) process.stderr.write(`tandem: cannot write to ${name}: ${e.message}\n`)
    process.exit(1)
  })
}
dropOutputWhenReaderGoes(process.stdout, 'standard output')
dropOutputWhenReaderGoes(process.stderr, 'standard error')

// a process "on" a host whose clock was made to jump (tandem host --fault-injection) reads its wall clock
const wall = process.env[WALL_OFFSET_ENV]
if (wall) followWallOffset(wall)
void main(process.argv)
