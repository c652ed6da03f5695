import { createRequire } from 'node:module'
/**
 * A progress bar on a terminal (stderr), nothing otherwise; `force` shows it anyway (-p).
 * cli-progress is loaded only when a bar is shown: it costs ~12 ms of start-up.
 */
export async function progressBar(label: string, force = false): Promise<{ update(done: number, total: number): void; stop(): void }> {
  if (!force && !process.stderr.isTTY) return { update() {}, stop() {} }
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof import('cli-progress')
  const bar = new cliProgress.SingleBar(
    { format: `${label} [{bar}] {percentage}% | {value}/{total} MiB`, stream: process.stderr, hideCursor: true, noTTYOutput: force, notTTYSchedule: 1000 },
    cliProgress.Presets.shades_classic,
  )
  let started = false
  const mib = (n: number) => Math.round(n / 2 ** 20)
  return {
    update(done, total) {
      if (!started) {
        bar.start(mib(total), 0)
        started = true
      }
      bar.update(mib(done))
    },
    stop() {
      if (started) bar.stop()
      started = false
    },
  }
}
