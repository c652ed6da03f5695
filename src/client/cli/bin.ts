/**
 * The CLI's entry. The build bundles it, with program.ts and everything the short-lived commands
 * (`disk`, `lock`, `vm`) load, into one CommonJS file, dist/src/client/cli/cli.cjs
 * (scripts/build-cli.ts), which the `tandem` executable (tandem.cts) runs. The long-running
 * parts (`serve`, `vm run`, the lock manager) stay separate modules, imported when their
 * command runs.
 */
import { followWallOffset, WALL_OFFSET_ENV } from '../host/wall-clock.js'
import { main } from './program.js'

// a process "on" a host whose clock was made to jump (tandem host --fault-injection) reads its wall clock
const wall = process.env[WALL_OFFSET_ENV]
if (wall) followWallOffset(wall)
void main(process.argv)
