import type { Snapshot } from '../api/tandem.js'

/** The "you are here" line under the current snapshot, as vSphere's snapshot manager draws it. */
export const YOU_ARE_HERE = 'You are here'

/** `2026-12-02T05:00:30.123Z` as `2026-12-02 05:00:30 UTC` (the text as given when it is not a date). */
export function shortTime(iso: string): string {
  const m = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?Z$/.exec(iso)
  return m ? `${m[1]} ${m[2]} UTC` : iso
}

/** A description on one line (newlines as ⏎), so that a tree line stays one line. */
const oneLine = (d: string) => d.replace(/\r?\n/g, ' ⏎ ')

/**
 * The snapshot tree as text: each snapshot under its parent with box-drawing branches, its
 * creation time and description; the current state ("You are here") under the current snapshot
 * (at the top level when there is none), the current snapshot marked `*`. Children in creation
 * order. Snapshots whose parent is missing (a damaged record) are drawn at the top level.
 */
export function drawTree(disk: string, current: string | null, snapshots: Snapshot[]): string {
  const names = new Set(snapshots.map((s) => s.name))
  const byParent = new Map<string | null, Snapshot[]>()
  for (const s of [...snapshots].sort((a, b) => a.createdAt.localeCompare(b.createdAt))) {
    const p = s.parent !== null && names.has(s.parent) ? s.parent : null
    byParent.set(p, [...(byParent.get(p) ?? []), s])
  }
  const lines = [disk]
  type Node = { label: string; key: string | null; here: boolean }
  const childrenOf = (key: string | null): Node[] => {
    const kids: Node[] = (byParent.get(key) ?? []).map((s) => ({
      label: `${s.name}${s.name === current ? ' *' : ''}  ${shortTime(s.createdAt)}${s.description ? `  ${oneLine(s.description)}` : ''}`,
      key: s.name,
      here: false,
    }))
    if (key === current) kids.push({ label: `▶ ${YOU_ARE_HERE}`, key: null, here: true })
    return kids
  }
  const walk = (key: string | null, prefix: string, seen: Set<string>) => {
    const kids = childrenOf(key)
    kids.forEach((k, i) => {
      const last = i === kids.length - 1
      lines.push(`${prefix}${last ? '└─ ' : '├─ '}${k.label}`)
      if (!k.here && k.key !== null && !seen.has(k.key)) walk(k.key, prefix + (last ? '   ' : '│  '), new Set([...seen, k.key]))
    })
  }
  walk(null, '', new Set())
  return lines.join('\n') + '\n'
}
