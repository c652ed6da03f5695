// A disk's snapshot tree, laid out as vSphere's snapshot manager draws it: each snapshot under
// its parent, children oldest first, and "You are here" (the disk's running state) under the
// snapshot it was last created from or reverted to.

import { s } from './dom.js'

/** Marks the running state's node (it is not a snapshot: no snapshot may have this name). */
export const HERE = Symbol('here')

/**
 * Rows of the tree in drawing order: `{ name, snapshot, depth, row, parentRow }`, where
 * `name` is the snapshot's name or HERE, and parentRow is null for a root. Snapshots whose parent
 * is not in the list (a damaged record) are drawn as roots rather than lost.
 */
export function layout(snapshots, current) {
  const known = new Set(snapshots.map((x) => x.name))
  const children = new Map()
  const kids = (p) => children.get(p) ?? children.set(p, []).get(p)
  const byAge = [...snapshots].sort((a, b) => String(a.createdAt).localeCompare(String(b.createdAt)))
  for (const x of byAge) kids(x.parent !== null && known.has(x.parent) ? x.parent : null).push({ name: x.name, snapshot: x })
  kids(current !== null && known.has(current) ? current : null).push({ name: HERE, snapshot: null })
  const rows = []
  const walk = (parent, depth, parentRow) => {
    for (const c of children.get(parent) ?? []) {
      const row = rows.length
      rows.push({ ...c, depth, row, parentRow })
      if (c.name !== HERE) walk(c.name, depth + 1, row)
    }
  }
  walk(null, 0, null)
  return rows
}

const ROW = 26
const INDENT = 22
const R = 6

/**
 * The tree as SVG. Each snapshot is a `g.snap[data-snapshot][data-parent]` that calls
 * `onSelect(name)` when clicked (or Enter/Space); `selected` and the current snapshot are marked.
 */
export function drawTree(snapshots, current, { selected = null, onSelect = () => {} } = {}) {
  const rows = layout(snapshots, current)
  const width = Math.max(240, ...rows.map((r) => 40 + r.depth * INDENT + 9 * (r.name === HERE ? 12 : r.name.length + 12)))
  const svg = s('svg', { class: 'tree', width, height: rows.length * ROW + 8, viewBox: `0 0 ${width} ${rows.length * ROW + 8}`, role: 'tree' })
  const cx = (r) => 12 + r.depth * INDENT
  const cy = (r) => 4 + r.row * ROW + ROW / 2
  for (const r of rows) {
    if (r.parentRow === null) continue
    const p = rows[r.parentRow]
    svg.append(s('path', { class: 'edge', d: `M${cx(p)} ${cy(p) + R} V${cy(r)} H${cx(r) - R}` }))
  }
  for (const r of rows) {
    if (r.name === HERE) {
      svg.append(
        s('g', { class: 'here', dataset: { here: '' } }, s('path', { d: `M${cx(r) - R} ${cy(r) - R} L${cx(r) + R} ${cy(r)} L${cx(r) - R} ${cy(r) + R} Z` }), s('text', { x: cx(r) + 12, y: cy(r) + 4 }, 'You are here')),
      )
      continue
    }
    const snap = r.snapshot
    const cls = ['snap', snap.name === current ? 'current' : '', snap.name === selected ? 'selected' : ''].filter(Boolean).join(' ')
    const pick = () => onSelect(snap.name)
    svg.append(
      s(
        'g',
        {
          class: cls,
          tabindex: 0,
          role: 'treeitem',
          'aria-selected': snap.name === selected ? 'true' : 'false',
          dataset: { snapshot: snap.name, parent: snap.parent ?? '' },
          onclick: pick,
          onkeydown: (e) => {
            if (e.key === 'Enter' || e.key === ' ') {
              e.preventDefault()
              pick()
            }
          },
        },
        s('title', {}, `${snap.name}\ncreated ${snap.createdAt}${snap.description ? `\n${snap.description}` : ''}`),
        s('rect', { class: 'hit', x: cx(r) - R - 4, y: cy(r) - ROW / 2 + 1, width: width - cx(r) + R, height: ROW - 2, rx: 4 }),
        s('circle', { cx: cx(r), cy: cy(r), r: R }),
        s('text', { x: cx(r) + 12, y: cy(r) + 4 }, snap.name),
      ),
    )
  }
  return svg
}
