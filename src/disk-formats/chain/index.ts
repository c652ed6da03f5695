export { openImage, openVmdk, probeFormat, attachParents, MAX_CHAIN_DEPTH, type ImageFormat, type OpenImageOptions } from './open-chain.js'
export { convert, nonZeroRuns, type ConvertOptions } from './convert.js'
export { commit, findChildren, type CommitOptions, type CommitResult } from './commit.js'
export { rebase, type RebaseOptions } from './rebase.js'
