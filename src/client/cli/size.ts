/** Parses sizes the way qemu-img does: 512, 64k, 64K, 64M, 10G, 1.5T (binary units), rounded up to 512. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkKmMgGtTpPeE]?)(?:i?B)?\s*$/.exec(text)
  if (!m) throw new Error(`invalid size '${text}': use a number with an optional suffix k, M, G, T, P or E (e.g. 64M)`)
  const units: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 }
  const bytes = Number(m[1]) * units[m[2].toLowerCase()]
  if (!Number.isSafeInteger(Math.ceil(bytes))) throw new Error(`invalid size '${text}': too large`)
  if (bytes <= 0) throw new Error(`invalid size '${text}': must be greater than 0`)
  return Math.ceil(bytes / 512) * 512
}

/** "64 MiB", "1.5 GiB": qemu-img's human sizes. */
export function humanSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB']
  let v = bytes
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  if (i === 0) return `${bytes} B`
  const s = v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)
  return `${s.replace(/\.0+$|(\.\d*?)0+$/, '$1')} ${units[i]}`
}
