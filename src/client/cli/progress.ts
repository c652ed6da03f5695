import cliProgress from 'cli-progress'

/** A progress bar on a terminal (stderr), nothing otherwise; `force` shows it anyway (-p). */
export function progressBar(label: string, force = false): { update(done: number, total: number): void; stop(): void } {
  if (!force && !process.stderr.isTTY) return { update() {}, stop() {} }
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
    },
  }
}
