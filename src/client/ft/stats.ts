/**
 * Summaries of FT samples (lag, output delay) for metrics: nearest-rank percentiles over a plain
 * list of numbers. Pure; callers bound how many samples they keep.
 */

export interface Percentiles {
  /** how many samples the summary covers */
  count: number
  p50: number
  p95: number
  p99: number
  max: number
}

/** Nearest-rank percentiles of `samples` (not modified); all 0 for none. */
export function percentiles(samples: readonly number[]): Percentiles {
  const n = samples.length
  if (n === 0) return { count: 0, p50: 0, p95: 0, p99: 0, max: 0 }
  const s = Float64Array.from(samples).sort()
  const rank = (p: number) => s[Math.min(n, Math.max(1, Math.ceil(p * n))) - 1]
  return { count: n, p50: rank(0.5), p95: rank(0.95), p99: rank(0.99), max: s[n - 1] }
}

/** The median of `samples` (nearest rank, the lower middle for an even count); NaN for none. */
export function median(samples: readonly number[]): number {
  return samples.length === 0 ? NaN : percentiles(samples).p50
}
