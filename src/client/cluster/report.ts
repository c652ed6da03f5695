import type { Scheduled } from './faults.js'
import type { Verdict } from './checkers.js'
import { describe } from './faults.js'

export interface Series {
  name: string
  unit: string
  /** [ms after the start, value] */
  points: [number, number][]
}

export interface RunReport {
  scenario: string
  description?: string
  seed: number
  run: number
  ok: boolean
  network: string
  startedAt: string
  /** the epoch ms of time 0 (the workloads' start), which the timeline's and plots' ms count from */
  t0Wall?: number
  wallMs: number
  /** ms the workloads ran (the plots' x axis) */
  spanMs: number
  timeline: Scheduled[]
  verdicts: Verdict[]
  series: Series[]
  error?: string
  replay: string
  /** pairs restarted because they split while starting (the machine too busy for their loss timeout) */
  setupRetries?: string[]
}

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!)
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b']
const W = 860
const H = 180
const PAD = { l: 60, r: 16, t: 24, b: 28 }

/** An SVG line plot of `series` over [0, spanMs], the faults shaded behind it. */
export function plot(title: string, series: Series[], spanMs: number, faults: Scheduled[]): string {
  const all = series.flatMap((s) => s.points)
  const yMax = Math.max(1, ...all.map((p) => p[1])) * 1.1
  const x = (ms: number) => PAD.l + ((W - PAD.l - PAD.r) * Math.min(ms, spanMs)) / Math.max(1, spanMs)
  const y = (v: number) => H - PAD.b - ((H - PAD.t - PAD.b) * v) / yMax
  const bands = faults
    .filter((f) => f.appliedMs !== null)
    .map((f) => `<rect x="${x(f.appliedMs!)}" y="${PAD.t}" width="${Math.max(2, x(f.liftedMs ?? f.appliedMs! + 1) - x(f.appliedMs!))}" height="${H - PAD.t - PAD.b}" fill="#f4a582" opacity="0.35"><title>${esc(describe(f.fault))}</title></rect>`)
    .join('')
  const ticks = Array.from({ length: 6 }, (_, i) => (spanMs * i) / 5)
    .map((ms) => `<line x1="${x(ms)}" x2="${x(ms)}" y1="${H - PAD.b}" y2="${H - PAD.b + 4}" stroke="#333"/><text x="${x(ms)}" y="${H - 8}" font-size="10" text-anchor="middle">${(ms / 1000).toFixed(1)} s</text>`)
    .join('')
  const yTicks = [0, yMax / 2, yMax].map((v) => `<text x="${PAD.l - 6}" y="${y(v) + 3}" font-size="10" text-anchor="end">${v >= 100 ? Math.round(v) : v.toFixed(1)}</text>`).join('')
  const lines = series
    .map((s, i) => (s.points.length ? `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="1.5" points="${s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ')}"><title>${esc(s.name)}</title></polyline>` : ''))
    .join('')
  const legend = series.map((s, i) => `<tspan fill="${COLORS[i % COLORS.length]}">■ ${esc(s.name)} (${esc(s.unit)}${s.points.length ? '' : ', no samples'})</tspan>`).join('  ')
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" role="img" aria-label="${esc(title)}"><rect width="${W}" height="${H}" fill="#fff"/>${bands}<line x1="${PAD.l}" x2="${W - PAD.r}" y1="${H - PAD.b}" y2="${H - PAD.b}" stroke="#333"/><line x1="${PAD.l}" x2="${PAD.l}" y1="${PAD.t}" y2="${H - PAD.b}" stroke="#333"/>${ticks}${yTicks}${lines}<text x="${PAD.l}" y="14" font-size="12" font-weight="bold">${esc(title)}</text><text x="${PAD.l + 8 + title.length * 7}" y="14" font-size="11">${legend}</text></svg>`
}

/** The fault timeline as bars, one row per fault. */
export function timelineSvg(faults: Scheduled[], spanMs: number): string {
  const row = 18
  const h = PAD.t + row * Math.max(1, faults.length) + PAD.b
  const x = (ms: number) => PAD.l + ((W - PAD.l - PAD.r) * Math.min(ms, spanMs)) / Math.max(1, spanMs)
  const bars = faults
    .map((f, i) => {
      const y0 = PAD.t + i * row
      const a = f.appliedMs ?? f.atMs
      const b = f.liftedMs ?? a
      const failed = f.note.startsWith('FAILED')
      return `<rect x="${x(a)}" y="${y0 + 2}" width="${Math.max(3, x(b) - x(a))}" height="${row - 4}" fill="${failed ? '#999' : '#d6604d'}"/><text x="${Math.min(x(a) + Math.max(3, x(b) - x(a)) + 4, W - 300)}" y="${y0 + row - 5}" font-size="11">${esc(describe(f.fault))} @ ${a} ms</text>`
    })
    .join('')
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${h}" role="img" aria-label="fault timeline"><rect width="${W}" height="${h}" fill="#fff"/><text x="${PAD.l}" y="14" font-size="12" font-weight="bold">fault timeline</text>${bars}<line x1="${PAD.l}" x2="${W - PAD.r}" y1="${h - PAD.b}" y2="${h - PAD.b}" stroke="#333"/>${[0, 1, 2, 3, 4, 5].map((i) => `<text x="${x((spanMs * i) / 5)}" y="${h - 8}" font-size="10" text-anchor="middle">${((spanMs * i) / 5000).toFixed(1)} s</text>`).join('')}</svg>`
}

/** One run's page: verdicts, replay command, fault timeline, plots (inline SVG: no scripts, no CDN). */
export function runHtml(r: RunReport): string {
  const groups = new Map<string, Series[]>()
  for (const s of r.series) groups.set(s.unit, [...(groups.get(s.unit) ?? []), s])
  const plots = [...groups.entries()].map(([unit, ss]) => plot(unit, ss, r.spanMs, r.timeline)).join('\n')
  const verdicts = r.verdicts.map((v) => `<tr class="${v.ok ? 'ok' : 'bad'}"><td>${v.ok ? 'PASS' : 'FAIL'}</td><td>${esc(v.name)}</td><td>${esc(v.detail)}</td></tr>`).join('')
  const faults = r.timeline.map((f) => `<tr><td>${f.atMs}</td><td>${f.appliedMs ?? '-'}</td><td>${f.liftedMs ?? '-'}</td><td><code>${esc(describe(f.fault))}</code></td><td>${esc(f.note)}</td></tr>`).join('')
  return `<!doctype html><html><head><meta charset="utf-8"><title>${esc(r.scenario)} seed ${r.seed}: ${r.ok ? 'PASS' : 'FAIL'}</title><style>
body{font:14px system-ui,sans-serif;margin:24px;max-width:920px;color:#222}h1{font-size:20px}.ok td:first-child{color:#1a7f37;font-weight:bold}.bad td:first-child{color:#cf222e;font-weight:bold}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}code{background:#f4f4f4;padding:1px 4px}.verdict{font-size:18px;font-weight:bold;color:${r.ok ? '#1a7f37' : '#cf222e'}}</style></head><body>
<h1>tandem cluster: ${esc(r.scenario)} — run ${r.run}, seed ${r.seed}</h1>
<p class="verdict">${r.ok ? 'PASS' : 'FAIL'}</p>${r.error ? `<p><b>error:</b> ${esc(r.error)}</p>` : ''}
<p>${esc(r.description ?? '')}</p>
${r.setupRetries?.length ? `<p><b>setup retries:</b> ${esc(r.setupRetries.join('; '))}</p>` : ''}<p>started ${esc(r.startedAt)}, ${(r.wallMs / 1000).toFixed(1)} s, network ${esc(r.network)}. Replay: <code>${esc(r.replay)}</code></p>
<h2>Checkers</h2><table><tr><th></th><th>checker</th><th>verdict</th></tr>${verdicts}</table>
<h2>Faults</h2>${timelineSvg(r.timeline, r.spanMs)}<table><tr><th>drawn (ms)</th><th>applied</th><th>lifted</th><th>fault</th><th>what it hit</th></tr>${faults}</table>
<h2>Over time</h2>${plots || '<p>no samples</p>'}
</body></html>
`
}

/** The runs' index page. */
export function indexHtml(scenario: string, runs: RunReport[]): string {
  const rows = runs.map((r) => `<tr class="${r.ok ? 'ok' : 'bad'}"><td>${r.ok ? 'PASS' : 'FAIL'}</td><td><a href="run-${r.run}-seed-${r.seed}/report.html">run ${r.run}</a></td><td>${r.seed}</td><td>${(r.wallMs / 1000).toFixed(1)} s</td><td>${esc(r.verdicts.filter((v) => v.ms !== undefined).map((v) => `${v.name} ${v.ms} ms`).join(', '))}</td><td>${esc(r.verdicts.filter((v) => !v.ok).map((v) => v.name).join(', ') || r.error || '')}</td></tr>`).join('')
  const passed = runs.filter((r) => r.ok).length
  return `<!doctype html><html><head><meta charset="utf-8"><title>${esc(scenario)}: ${passed}/${runs.length}</title><style>body{font:14px system-ui,sans-serif;margin:24px}.ok td:first-child{color:#1a7f37;font-weight:bold}.bad td:first-child{color:#cf222e;font-weight:bold}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 8px}</style></head><body><h1>tandem cluster: ${esc(scenario)} — ${passed} of ${runs.length} runs passed</h1><table><tr><th></th><th>run</th><th>seed</th><th>time</th><th>measured</th><th>failed</th></tr>${rows}</table></body></html>
`
}

const xml = (s: string) => s.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!)

/** JUnit XML: one testsuite per run, one testcase per checker (a run that could not start: one failing case). */
export function junitXml(scenario: string, runs: RunReport[]): string {
  const suites = runs.map((r) => {
    const cases = r.verdicts.length ? r.verdicts : [{ name: 'run', ok: false, detail: r.error ?? 'no checker ran' }]
    const failures = cases.filter((v) => !v.ok).length
    const body = cases
      .map((v) => `    <testcase classname="${xml(`${scenario}.seed-${r.seed}`)}" name="${xml(v.name)}"${v.ms !== undefined ? ` time="${(v.ms / 1000).toFixed(3)}"` : ''}>${v.ok ? '' : `<failure message="${xml(v.detail.slice(0, 500))}">${xml(`${v.detail}\nreplay: ${r.replay}`)}</failure>`}</testcase>`)
      .join('\n')
    return `  <testsuite name="${xml(`${scenario} run ${r.run} seed ${r.seed}`)}" tests="${cases.length}" failures="${failures}" time="${(r.wallMs / 1000).toFixed(3)}" timestamp="${xml(r.startedAt)}">\n${body}\n  </testsuite>`
  })
  return `<?xml version="1.0" encoding="UTF-8"?>\n<testsuites name="${xml(scenario)}">\n${suites.join('\n')}\n</testsuites>\n`
}
