/**
 * Filters: each `(next, opts) => BlockDevice`, stacked over a disk (DESIGN §11). An export is
 * `checked(swappable(chain))`; the FT backup's disk is `dropWrites(disk)`.
 */
export { Filter } from './filter.js'
export { checked, type CheckedOptions } from './checked.js'
export { readOnly } from './read-only.js'
export { swappable, LiveDisk, type SwappableOptions } from './swappable.js'
export { dropWrites } from './drop-writes.js'
export { delay, type DelayOptions } from './delay.js'
export { error, type ErrorOptions } from './error.js'
export { counting, type Counts } from './counting.js'
export type { FaultOptions, Op } from './fault.js'
export { abortable, isCancelled } from './abortable.js'
