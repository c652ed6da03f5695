// Small line charts of recent values, as inline SVG.

import { s, h } from './dom.js'

const W = 260
const H = 64

/**
 * A chart of `series` ([{ label, values, cls }], values oldest first, NaN for no value) on one
 * scale from 0, with the latest value of each written beside its label by `format`.
 */
export function chart(title, series, format) {
  const all = series.flatMap((x) => x.values).filter(Number.isFinite)
  const top = Math.max(...all, 0) || 1
  const n = Math.max(2, ...series.map((x) => x.values.length))
  const x = (i, len) => W - ((len - 1 - i) * W) / (n - 1)
  const y = (v) => H - 2 - (v / top) * (H - 6)
  const svg = s('svg', { class: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title })
  svg.append(s('line', { class: 'axis', x1: 0, y1: H - 1, x2: W, y2: H - 1 }))
  for (const ser of series) {
    let d = ''
    ser.values.forEach((v, i) => {
      if (!Number.isFinite(v)) return
      d += `${d === '' || !Number.isFinite(ser.values[i - 1]) ? 'M' : 'L'}${x(i, ser.values.length).toFixed(1)} ${y(v).toFixed(1)}`
    })
    if (d) svg.append(s('path', { class: `line ${ser.cls ?? ''}`, d }))
  }
  const latest = (v) => {
    const last = [...v].reverse().find(Number.isFinite)
    return last === undefined ? '—' : format(last)
  }
  return h(
    'figure',
    { class: 'chart-box' },
    h('figcaption', {}, h('b', {}, title), ' ', series.map((ser) => h('span', { class: `key ${ser.cls ?? ''}` }, `${ser.label} ${latest(ser.values)}`))),
    svg,
    h('div', { class: 'scale' }, `max ${format(top)}`),
  )
}
