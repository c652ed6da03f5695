import { LagMeter, LagController } from '../../../src/client/ft/lag.js'

/**
 * A plant model of an FT pair for the lag controller, in fixed time steps (fluid: each side
 * executes its share of full speed every step):
 * - the primary runs at L % of full speed (L: the controller's limit) and ships a progress mark
 *   at the end of every step (a slice end);
 * - the log reaches the backup `linkMs` later; the backup runs at r % of full speed (`backup(t)`),
 *   never past the newest mark it has (the logged horizon);
 * - the backup acks what it executed every step; an ack reaches the primary `linkMs` later plus a
 *   random jitter in [0, jitterMs) (in order, like TCP); the primary feeds it to the LagMeter;
 * - every sampleMs the controller decides on `meter.periodLag`.
 */
export interface PlantOptions {
  /** the backup's speed, percent of full, as a function of time in ms */
  backup: (tMs: number) => number
  controller: LagController
  meter?: LagMeter
  stepMs?: number
  /** instructions per ms at full speed */
  speed?: number
  linkMs?: number
  jitterMs?: number
  /** a seed for the jitter */
  seed?: number
}

export interface PlantPeriod {
  /** ms at the period's end */
  t: number
  /** the limit decided at the period's end */
  limit: number
  /** the period's lag, as the controller saw it */
  lag: number
}

export interface PlantRun {
  periods: PlantPeriod[]
  meter: LagMeter
  /** every lag sample (ms) with the time it was taken */
  samples: { t: number; lag: number }[]
}

/** mulberry32: a small seeded generator, so a jitter run is the same every time */
export function seeded(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

/** Runs the plant for `durationMs`. */
export function runPlant(o: PlantOptions, durationMs: number): PlantRun {
  const stepMs = o.stepMs ?? 1
  const speed = o.speed ?? 100_000
  const linkMs = o.linkMs ?? 1
  const jitterMs = o.jitterMs ?? 0
  const rand = seeded(o.seed ?? 1)
  const meter = o.meter ?? new LagMeter()
  const ctl = o.controller
  const sampleMs = ctl.options.sampleMs
  const toBackup: { at: number; instret: number }[] = []
  const toPrimary: { at: number; executed: number }[] = []
  const periods: PlantPeriod[] = []
  const samples: { t: number; lag: number }[] = []
  let primary = 0
  let backup = 0
  let horizon = 0
  let lastAckAt = 0
  let lastAcked = 0
  let periodFrom = 0
  let nextDecision = sampleMs
  for (let t = stepMs; t <= durationMs + 1e-9; t += stepMs) {
    primary += (speed * ctl.percent * stepMs) / 100
    const instret = Math.floor(primary)
    meter.progress(instret, t)
    toBackup.push({ at: t + linkMs, instret })
    while (toBackup.length && toBackup[0].at <= t) horizon = toBackup.shift()!.instret
    backup = Math.min(horizon, backup + (speed * o.backup(t) * stepMs) / 100)
    const executed = Math.floor(backup)
    lastAckAt = Math.max(lastAckAt, t + linkMs + rand() * jitterMs)
    toPrimary.push({ at: lastAckAt, executed })
    while (toPrimary.length && toPrimary[0].at <= t) {
      const a = toPrimary.shift()!
      if (a.executed === lastAcked) continue
      lastAcked = a.executed
      samples.push({ t, lag: meter.ack(a.executed, t) })
    }
    if (t >= nextDecision - 1e-9) {
      const lag = meter.periodLag(periodFrom, t)
      periods.push({ t, limit: ctl.update(lag), lag })
      periodFrom = t
      nextDecision += sampleMs
    }
  }
  return { periods, meter, samples }
}
