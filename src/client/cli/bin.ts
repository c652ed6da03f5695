/**
 * The CLI's entry. The build bundles it, with program.ts and everything the short-lived commands
 * (`disk`, `lock`, `vm`) load, into one CommonJS file, dist/src/client/cli/cli.cjs
 * (scripts/build-cli.ts), which the `tandem` executable (tandem.cts) runs. The long-running
 * parts (`serve`, `vm run`, the lock manager) stay separate modules, imported when their
 * command runs.
 */
import { main } from './program.js'

void main(process.argv)
