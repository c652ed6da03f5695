/** The logical unit's block size and the limits it accepts and advertises (VPD page 0xB0). */

export const BLOCK = 512
/** Largest transfer accepted and advertised (VPD 0xB0): 32 MiB, as the NBD export. */
export const MAX_TRANSFER_BLOCKS = 65536
/** COMPARE AND WRITE of at most this many blocks (VMFS uses one). */
export const MAX_CAW_BLOCKS = 128
export const MAX_UNMAP_DESCRIPTORS = 256
export const MAX_WRITE_SAME_BLOCKS = 1 << 20
/**
 * WRITE ATOMIC(16): whole 4 KiB pages (aligned to and a multiple of 8 blocks), up to the maximum
 * transfer. Atomic against every other command (the exclusive gate); across a crash each page is
 * written whole, but a write of several pages may be torn at a page boundary (README).
 */
export const ATOMIC_ALIGNMENT = 8
export const MAX_ATOMIC_BLOCKS = MAX_TRANSFER_BLOCKS
