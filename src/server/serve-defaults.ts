/**
 * Defaults of `tandem serve` (a module of its own, without imports: the CLI's bundle shows them
 * in --help without loading the server). 256 connections per protocol stay under the usual 1024
 * descriptors with room for disks and REST; 10 s to finish a handshake is qemu-nbd's
 * --handshake-limit default; 4 s of grace at shutdown keeps a stop under 10 s with the flush.
 */
export const SERVE_DEFAULTS = { maxConnections: 256, handshakeLimitMs: 10_000, shutdownGraceMs: 4_000 }
