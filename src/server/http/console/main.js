// The console: polls the REST API and draws disks with their snapshot trees, exports, locks,
// hosts and charts of /metrics. Locks and hosts are polled every LIVE_MS so a lock taken anywhere
// shows within a second; the rest every SLOW_MS, and at once after an action on the page.

import { ApiError, changeToken, json, setTokenDialog, text } from './api.js'
import { h, replace } from './dom.js'
import { drawTree } from './tree.js'
import { chart } from './chart.js'
import { parse, rates, reading } from './prom.js'
import * as fmt from './format.js'

const LIVE_MS = 400
const SLOW_MS = 2000
/** readings kept for the charts: two minutes at SLOW_MS */
const KEEP = 61

const $ = (id) => document.getElementById(id)
const enc = encodeURIComponent
const pill = (word) => h('span', { class: `pill ${word}` }, word)
const empty = (msg) => h('p', { class: 'empty' }, msg)

function status(msg, error = false) {
  const el = $('status')
  el.textContent = msg
  el.classList.toggle('error', error)
}

const describe = (e) => (e instanceof ApiError ? `${e.message} (${e.status})` : e instanceof TypeError ? 'the server cannot be reached' : String(e?.message ?? e))

/** Runs `fn` now and then `ms` after each run ends, skipping runs while the tab is hidden. */
function every(ms, fn) {
  const tick = async () => {
    if (!document.hidden) await fn().catch((e) => status(describe(e), true))
    setTimeout(tick, ms)
  }
  void tick()
}

setTokenDialog(
  (why) =>
    new Promise((resolve) => {
      const d = $('token-dialog')
      $('token-why').textContent = why
      $('token-input').value = ''
      d.addEventListener('close', () => resolve(d.returnValue === 'ok' ? $('token-input').value.trim() : null), { once: true })
      d.returnValue = ''
      d.showModal()
    }),
)
$('token-button').addEventListener('click', () => void changeToken())

// ---- disks and snapshot trees ------------------------------------------------------------

/** per disk: its card's parts, the selected snapshot, a pending confirmation, the last error */
const cards = new Map()
let disks = []

function card(name) {
  let c = cards.get(name)
  if (c) return c
  c = { selected: null, confirm: null, error: '', data: null }
  const form = h(
    'form',
    { class: 'inline new-snapshot' },
    h('input', { name: 'snapshot-name', placeholder: 'snapshot name', required: true, size: 14 }),
    h('input', { name: 'snapshot-description', placeholder: 'description (optional)', size: 22 }),
    h('button', { type: 'submit', class: 'primary', dataset: { action: 'create-snapshot' } }, 'Take snapshot'),
  )
  form.addEventListener('submit', (e) => {
    e.preventDefault()
    const snap = form.elements['snapshot-name'].value.trim()
    const description = form.elements['snapshot-description'].value.trim()
    act(name, `snapshot '${snap}' taken`, () => json(`/api/v1/disks/${enc(name)}/snapshots`, { method: 'POST', body: description ? { name: snap, description } : { name: snap } })).then((ok) => {
      if (!ok) return
      form.reset()
      c.selected = snap
    })
  })
  c.title = h('h3', {}, name)
  c.facts = h('div', { class: 'facts' })
  c.tree = h('div', { class: 'tree-box' })
  c.detail = h('div', { class: 'detail' })
  c.err = h('div', { class: 'error', role: 'alert' })
  c.el = h('article', { class: 'disk', dataset: { disk: name } }, c.title, c.facts, c.tree, c.detail, form, c.err)
  cards.set(name, c)
  return c
}

/** Runs an action of the page; true when it worked. Errors are shown on the disk's card. */
async function act(disk, done, fn) {
  const c = cards.get(disk)
  try {
    await fn()
    if (c) c.error = ''
    status(done)
    return true
  } catch (e) {
    if (c) c.error = describe(e)
    else status(describe(e), true)
    return false
  } finally {
    if (c) c.confirm = null
    await loadDisks().catch((e) => status(describe(e), true))
  }
}

function confirmBox(question, yes, run, c) {
  return h(
    'div',
    { class: 'confirm' },
    question,
    ' ',
    h('button', { type: 'button', class: 'danger', dataset: { action: 'confirm' }, onclick: run }, yes),
    ' ',
    h('button', { type: 'button', dataset: { action: 'cancel' }, onclick: () => ((c.confirm = null), drawCard(c)) }, 'Cancel'),
  )
}

function detail(c) {
  const d = c.data
  const snap = d.snapshots.find((x) => x.name === c.selected)
  if (c.confirm?.what === 'delete-disk') {
    return confirmBox(`Delete disk '${d.name}' and all its snapshots?`, 'Delete disk', () => act(d.name, `disk '${d.name}' deleted`, () => json(`/api/v1/disks/${enc(d.name)}`, { method: 'DELETE' })), c)
  }
  if (!snap) {
    return [
      h('span', { class: 'muted' }, d.snapshots.length ? 'Select a snapshot to revert to or delete it.' : 'No snapshots yet.'),
      ' ',
      h('button', { type: 'button', class: 'danger', dataset: { action: 'delete-disk' }, onclick: () => ((c.confirm = { what: 'delete-disk' }), drawCard(c)) }, 'Delete disk'),
    ]
  }
  const base = `/api/v1/disks/${enc(d.name)}/snapshots/${enc(snap.name)}`
  const info = h('div', {}, h('b', {}, snap.name), snap.isCurrent ? ' (current)' : '', h('span', { class: 'muted' }, ` · created ${fmt.when(snap.createdAt)}`), snap.description ? h('div', {}, snap.description) : null)
  if (c.confirm?.what === 'revert') {
    return [info, confirmBox(`Revert '${d.name}' to '${snap.name}'? What was written since is lost.`, 'Revert', () => act(d.name, `'${d.name}' reverted to '${snap.name}'`, () => json(`${base}/revert`, { method: 'POST', body: {} })), c)]
  }
  if (c.confirm?.what === 'delete') {
    return [info, confirmBox(`Delete snapshot '${snap.name}'? The disk keeps its data.`, 'Delete', () => act(d.name, `snapshot '${snap.name}' deleted`, async () => {
      await json(base, { method: 'DELETE' })
      c.selected = null
    }), c)]
  }
  return [
    info,
    h('div', { class: 'inline' },
      h('button', { type: 'button', dataset: { action: 'revert' }, onclick: () => ((c.confirm = { what: 'revert' }), drawCard(c)) }, 'Revert to this snapshot'),
      ' ',
      h('button', { type: 'button', class: 'danger', dataset: { action: 'delete' }, onclick: () => ((c.confirm = { what: 'delete' }), drawCard(c)) }, 'Delete snapshot'),
    ),
  ]
}

function drawCard(c) {
  const d = c.data
  const writers = d.writers ? `${d.writers} writer${d.writers === 1 ? '' : 's'}` : 'no writer'
  replace(c.facts, `${fmt.bytes(d.size)} · ${fmt.bytes(d.actualSize)} on disk · ${d.snapshots.length} snapshot${d.snapshots.length === 1 ? '' : 's'} · ${writers}`, d.prepared ? ` · snapshot '${d.prepared}' prepared` : '')
  replace(c.tree, drawTree(d.snapshots, d.current, { selected: c.selected, onSelect: (name) => {
    c.selected = c.selected === name ? null : name
    c.confirm = null
    drawCard(c)
  } }))
  replace(c.detail, detail(c))
  c.err.textContent = c.error
}

async function loadDisks() {
  const { disks: list } = await json('/api/v1/disks')
  disks = list
  const box = $('disks')
  const seen = new Set()
  for (const d of list) {
    const c = card(d.name)
    seen.add(d.name)
    if (c.selected && !d.snapshots.some((x) => x.name === c.selected)) c.selected = null
    const changed = JSON.stringify(d) !== JSON.stringify(c.data)
    c.data = d
    if (changed || c.error !== c.err.textContent) drawCard(c)
    if (c.el.parentNode !== box) box.append(c.el)
  }
  for (const [name, c] of cards) {
    if (!seen.has(name)) {
      c.el.remove()
      cards.delete(name)
    }
  }
  if (!list.length && !box.querySelector('.empty')) box.append(empty('No disks. Create one above, or with `tandem disk create`.'))
  if (list.length) box.querySelector('.empty')?.remove()
  drawExports()
}

$('new-disk').addEventListener('submit', (e) => {
  e.preventDefault()
  const f = e.target
  const name = f.elements.name.value.trim()
  json('/api/v1/disks', { method: 'POST', body: { name, size: f.elements.size.value.trim() } })
    .then(() => {
      f.reset()
      status(`disk '${name}' created`)
    })
    .catch((err) => status(describe(err), true))
    .finally(() => loadDisks().catch(() => undefined))
})

// ---- exports ------------------------------------------------------------------------------

let connections = {}

function drawExports() {
  const per = Object.entries(connections).map(([p, n]) => `${n} ${p}`).join(', ')
  const rows = disks.map((d) => {
    const open = Object.entries(d.openExports)
    return h(
      'tr',
      { dataset: { export: d.name } },
      h('td', {}, d.name),
      h('td', {}, h('code', {}, d.nbd)),
      h('td', {}, h('code', {}, `${d.iscsi.portal} ${d.iscsi.iqn}`)),
      h('td', {}, open.length ? open.map(([k, n]) => h('div', {}, `${k}: ${n} client${n === 1 ? '' : 's'}`)) : h('span', { class: 'muted' }, 'none')),
      h('td', {}, d.access.initiators.length ? d.access.initiators.join(', ') : h('span', { class: 'muted' }, 'any initiator'), d.access.chap ? ' · CHAP' : ''),
    )
  })
  replace(
    $('exports'),
    h('p', { class: 'muted' }, `Connections open now: ${per || 'none'}.`),
    rows.length ? h('table', {}, h('thead', {}, h('tr', {}, ['Disk', 'NBD', 'iSCSI target', 'Open by', 'Access'].map((x) => h('th', {}, x)))), h('tbody', {}, rows)) : empty('No exports.'),
  )
}

// ---- metrics ------------------------------------------------------------------------------

const readings = []

async function loadMetrics() {
  const r = reading(parse(await text('/metrics')), Date.now())
  readings.push(r)
  if (readings.length > KEEP) readings.shift()
  connections = r.connections
  const rs = readings.slice(1).map((b, i) => rates(readings[i], b))
  const col = (k) => rs.map((x) => x[k])
  replace(
    $('charts'),
    chart('Throughput', [{ label: 'read', values: col('read') }, { label: 'write', values: col('written'), cls: 'b' }], (v) => `${fmt.bytes(v)}/s`),
    chart('Requests', [{ label: 'all', values: col('ops') }], (v) => `${v.toFixed(v < 10 ? 1 : 0)}/s`),
    chart('Latency', [{ label: 'mean', values: col('meanLatency') }, { label: 'p99 ≤', values: col('p99'), cls: 'b' }], fmt.seconds),
  )
  drawExports()
}

// ---- locks and hosts ----------------------------------------------------------------------

function drawLocks(locks) {
  const rows = locks.map((l) => {
    const holders = l.state === 'exclusive' ? [l.owner] : l.sharedHolders
    return h(
      'tr',
      { dataset: { lock: l.name, state: l.state } },
      h('td', {}, l.name || `record ${l.record}`),
      h('td', {}, pill(l.state), l.managed ? h('span', { class: 'muted' }, ' managed') : null),
      h('td', { class: 'holders' }, holders.length ? holders.join(', ') : h('span', { class: 'muted' }, '—')),
      h('td', {}, l.state === 'exclusive' ? fmt.duration(l.ownerHeartbeatAgeMs) : '—'),
      h('td', { class: 'waiting' }, l.waiting.length ? l.waiting.join(', ') : h('span', { class: 'muted' }, '—')),
      h('td', {}, l.generation),
      h('td', { class: 'error' }, l.error ?? ''),
    )
  })
  replace(
    $('locks'),
    rows.length
      ? h('table', {}, h('thead', {}, h('tr', {}, ['Lock', 'State', 'Held by', 'Holder heartbeat', 'Waiting', 'Generation', ''].map((x) => h('th', {}, x)))), h('tbody', {}, rows))
      : empty('No locks.'),
  )
}

function drawHosts(hosts) {
  const rows = hosts.map((x) =>
    h(
      'tr',
      { dataset: { host: x.name, heartbeat: x.heartbeat } },
      h('td', {}, x.name || `slot ${x.slot}`),
      h('td', {}, x.slot),
      h('td', {}, pill(x.heartbeat)),
      h('td', {}, fmt.duration(x.heartbeatAgeMs)),
      h('td', {}, x.requesting ?? h('span', { class: 'muted' }, '—')),
      h('td', {}, x.vms.length ? x.vms.join(', ') : h('span', { class: 'muted' }, '—')),
      h('td', {}, x.api ? h('a', { href: `${x.api}/api/v1/vms`, target: '_blank', rel: 'noopener' }, x.api) : h('span', { class: 'muted' }, '—')),
      h('td', { class: 'error' }, x.error ?? ''),
    ),
  )
  replace(
    $('hosts'),
    rows.length
      ? h('table', {}, h('thead', {}, h('tr', {}, ['Host', 'Slot', 'Heartbeat', 'Age', 'Asking for', 'VMs', 'Host API', ''].map((x) => h('th', {}, x)))), h('tbody', {}, rows))
      : empty('No hosts in the lockspace.'),
  )
}

/** The lockspace's sections; its errors (503: unusable, 404: none) are shown in them. */
async function loadLive() {
  const [locks, hosts] = await Promise.allSettled([json('/api/v1/locks'), json('/api/v1/hosts')])
  if (locks.status === 'fulfilled') drawLocks(locks.value.locks)
  else replace($('locks'), h('p', { class: 'error' }, describe(locks.reason)))
  if (hosts.status === 'fulfilled') drawHosts(hosts.value.hosts.filter((x) => x.state !== 'free'))
  else replace($('hosts'), h('p', { class: 'error' }, describe(hosts.reason)))
}

// ---- VMs and FT pairs (the server asks the hosts' APIs) -------------------------------------

function drawVms({ vms, unreachable }) {
  const rows = vms.map((v) =>
    h(
      'tr',
      { dataset: { vm: v.name, host: v.host } },
      h('td', {}, v.name),
      h('td', {}, v.host),
      h('td', {}, pill(v.state)),
      h('td', {}, v.ft ? v.ft.side : h('span', { class: 'muted' }, 'alone')),
      h('td', {}, v.ft?.role ?? '—'),
      h('td', {}, v.ft && v.ft.lagMs !== null ? fmt.duration(v.ft.lagMs) : '—'),
      h('td', {}, v.ft && v.ft.logBytesPerSecond !== null ? `${fmt.bytes(v.ft.logBytesPerSecond)}/s` : '—'),
      h('td', {}, v.generation ?? '—'),
    ),
  )
  replace(
    $('vms'),
    rows.length
      ? h('table', {}, h('thead', {}, h('tr', {}, ['VM', 'Host', 'State', 'Pair side', 'Role', 'Lag', 'FT log', 'Lock generation'].map((x) => h('th', {}, x)))), h('tbody', {}, rows))
      : empty('No VMs on the hosts that registered an API (tandem host).'),
    unreachable.map((u) => h('p', { class: 'error' }, `host ${u.host} (${u.api}): ${u.error}`)),
  )
}

async function loadVms() {
  try {
    drawVms(await json('/api/v1/vms'))
  } catch (e) {
    replace($('vms'), h('p', { class: 'error' }, describe(e)))
  }
}

async function start() {
  const health = await json('/api/v1/health').catch((e) => (status(describe(e), true), null))
  if (health) $('datastore').textContent = health.datastore
  every(LIVE_MS, loadLive)
  every(SLOW_MS, loadDisks)
  every(SLOW_MS, loadMetrics)
  every(SLOW_MS, loadVms)
}

void start()
