/**
 * Crash-test committer: commits the delta at PATH into its parent, printing READY once loaded
 * and DONE when the commit returned. The test kills it with SIGKILL at a random point.
 * Usage: committer.js PATH
 */
import { commit } from '../../src/disk-formats/chain/index.js'

const out = (s: string) => process.stdout.write(s + '\n')
out('READY')
await commit(process.argv[2])
out('DONE')
