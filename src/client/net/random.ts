/**
 * A seeded uniform generator in [0, 1) (xorshift32), so that faults and load runs reproduce. The
 * seed is spread over the state first (small seeds would otherwise start with tiny draws).
 */
export function seededRandom(seed: number): () => number {
  let x = Math.imul((seed >>> 0) ^ 0x5bd1e995, 0x9e3779b1) >>> 0 || 1
  const next = () => {
    x ^= x << 13
    x >>>= 0
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    return x / 0x1_0000_0000
  }
  for (let i = 0; i < 4; i++) next()
  return next
}
