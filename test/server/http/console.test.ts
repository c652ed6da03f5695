import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { CLI, ROOT, run, tmp } from '../../helpers/peers.js'
import { startServe } from '../../helpers/server.js'
import { PRIMARY_VM, stubHostApi } from '../../helpers/host-api.js'

// The web console in a real browser: Debian's chromium, driven by puppeteer-core, against the
// built `tandem serve` (the files as `npm start` serves them from dist/).
// TANDEM_CONSOLE_SCREENSHOT=1 also writes the README's docs/console.png.

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p))
const skip = CHROMIUM ? undefined : 'chromium not installed (scripts/install-peers.sh)'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** The server's API token once it has one (REST auth: `.tandem/api-token`), else null. */
const tokenOf = (dir: string) => {
  const f = join(dir, '.tandem', 'api-token')
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : null
}

async function rest(base: string, dir: string, path: string, init: { method?: string; body?: unknown } = {}) {
  const token = tokenOf(dir)
  const headers: Record<string, string> = { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }
  const res = await fetch(base + path, { method: init.method ?? 'GET', headers, body: init.body === undefined ? undefined : JSON.stringify(init.body) })
  return { status: res.status, body: res.status === 204 ? null : await res.json() }
}

type Browser = Awaited<ReturnType<typeof import('puppeteer-core').default.launch>>

async function launch(t: Test): Promise<Browser> {
  const { default: puppeteer } = await import('puppeteer-core')
  const b = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...(process.getuid?.() === 0 ? ['--no-sandbox'] : []), '--disable-gpu', '--disable-dev-shm-usage'],
  })
  t.teardown(() => b.close())
  return b
}

/** A new tab that records console errors, page errors and failed requests. */
async function tab(b: Browser) {
  const page = await b.newPage()
  await page.setViewport({ width: 1280, height: 900 })
  const problems: string[] = []
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`)
  })
  page.on('pageerror', (e) => problems.push(`page error: ${(e as Error).message}`))
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`))
  return { page, problems }
}

t.test('the console: loads clean, takes, reverts and deletes snapshots, shows a lock within a second', { skip }, async (t) => {
  const dir = tmp(t, 'tandem-console-')
  // the two slow starts (a busy machine: seconds each) side by side
  const [srv, b] = await Promise.all([startServe(t, dir), launch(t)])
  const base = `http://127.0.0.1:${srv.httpPort}`
  const { page, problems } = await tab(b)
  // a server that asks for its token (REST auth) has it in the tab already: the question is tested below
  const token = tokenOf(dir)
  if (token) await page.evaluateOnNewDocument((x) => sessionStorage.setItem('tandem.apiToken', x), token)
  t.equal((await rest(base, dir, '/api/v1/disks', { method: 'POST', body: { name: 'vm1', size: '64M' } })).status, 201)
  t.equal((await rest(base, dir, '/api/v1/disks/vm1/snapshots', { method: 'POST', body: { name: 'installed' } })).status, 201)
  t.equal((await rest(base, dir, '/api/v1/disks', { method: 'POST', body: { name: 'data', size: '1G' } })).status, 201)

  const res = await page.goto(`${base}/`, { waitUntil: 'load' })
  t.equal(res?.status(), 200, 'GET / is the console')
  const vm1 = '[data-disk="vm1"]'
  await page.waitForSelector(`${vm1} [data-snapshot="installed"]`, { timeout: 5000 })
  await page.waitForSelector('#hosts [data-host]', { timeout: 5000 }) // the server itself, a host of its lockspace
  await page.waitForSelector('#charts svg', { timeout: 5000 })
  t.same(problems, [], 'no console errors, page errors or failed requests on load')

  // take a snapshot from the page: it shows in the tree under the one before, and in the API
  await page.type(`${vm1} input[name="snapshot-name"]`, 'patched')
  await page.type(`${vm1} input[name="snapshot-description"]`, 'after the patch')
  await page.click(`${vm1} [data-action="create-snapshot"]`)
  const node = await page.waitForSelector(`${vm1} [data-snapshot="patched"]`, { timeout: 3000 })
  t.equal(await node!.evaluate((e) => (e as SVGElement).dataset.parent), 'installed', 'drawn under its parent')
  let api = (await rest(base, dir, '/api/v1/disks/vm1/snapshots')).body as { current: string; snapshots: { name: string; parent: string | null }[] }
  t.equal(api.current, 'patched', 'the API has it as the current snapshot')
  t.same(api.snapshots.map((x) => [x.name, x.parent]), [['installed', null], ['patched', 'installed']])

  // revert to the first from the page (select, revert, confirm): "You are here" moves under it
  await page.click(`${vm1} [data-snapshot="installed"]`)
  await page.click(`${vm1} [data-action="revert"]`)
  await page.click(`${vm1} [data-action="confirm"]`)
  await page.waitForFunction((sel) => document.querySelector(`${sel} [data-snapshot="installed"]`)?.classList.contains('current'), { timeout: 3000 }, vm1)
  t.equal((await rest(base, dir, '/api/v1/disks/vm1/snapshots')).body.current, 'installed', 'reverted through the API')

  // delete the other from the page
  await page.click(`${vm1} [data-snapshot="patched"]`)
  await page.click(`${vm1} [data-action="delete"]`)
  await page.click(`${vm1} [data-action="confirm"]`)
  await page.waitForFunction((sel) => !document.querySelector(`${sel} [data-snapshot="patched"]`), { timeout: 3000 }, vm1)
  api = (await rest(base, dir, '/api/v1/disks/vm1/snapshots')).body
  t.same(api.snapshots.map((x) => x.name), ['installed'], 'deleted through the API')

  // a refused action says why on the card (a name the datastore refuses), and the page stays clean
  await page.type(`${vm1} input[name="snapshot-name"]`, 'bad/name')
  await page.click(`${vm1} [data-action="create-snapshot"]`)
  await page.waitForFunction((sel) => (document.querySelector(`${sel} .error`)?.textContent ?? '').includes('(400)'), { timeout: 3000 }, vm1)

  // a disk created and deleted from the page
  await page.type('#new-disk input[name="name"]', 'scratch')
  await page.type('#new-disk input[name="size"]', '8M')
  await page.click('#new-disk button[type="submit"]')
  await page.waitForSelector('[data-disk="scratch"]', { timeout: 3000 })
  t.equal((await rest(base, dir, '/api/v1/disks/scratch')).body.size, 8 << 20, 'created through the API')
  await page.click('[data-disk="scratch"] [data-action="delete-disk"]')
  await page.click('[data-disk="scratch"] [data-action="confirm"]')
  await page.waitForFunction(() => !document.querySelector('[data-disk="scratch"]'), { timeout: 3000 })
  t.equal((await rest(base, dir, '/api/v1/disks/scratch')).status, 404, 'deleted through the API')

  // a lock taken with the real CLI shows, with its holder, within a second of being held
  const mark = join(dir, 'held')
  const proc = spawn(process.execPath, [CLI, 'lock', 'run', 'backup-job', '--lockspace', join(dir, '.tandem', 'lockspace'), '--host', 'backup-host', '--', 'sh', '-c', `touch ${mark}; sleep 30`], { detached: true, stdio: 'ignore' })
  t.teardown(() => {
    try {
      process.kill(-proc.pid!, 'SIGKILL')
    } catch {
      /* gone */
    }
  })
  for (let i = 0; i < 400 && !existsSync(mark); i++) await sleep(10)
  t.ok(existsSync(mark), 'lock run started its command (the lock is held)')
  const held = statSync(mark).mtimeMs // the command started: the lock was taken just before
  const row = await page.waitForSelector('[data-lock="backup-job"][data-state="exclusive"]', { timeout: 5000 })
  const after = Math.round(Date.now() - held)
  t.ok(after < 1000, `the lock showed ${after} ms after it was held (under 1 s)`)
  t.equal(await row!.$eval('.holders', (e) => e.textContent), 'backup-host')
  await page.waitForSelector('[data-host="backup-host"][data-heartbeat]', { timeout: 3000 })

  // the VMs of the hosts, asked of their APIs by the server: backup-host registers one (a stub
  // listing a pair's primary), and the pair shows with its role and lag
  const hostApi = await stubHostApi(t, { host: 'backup-host', vms: [PRIMARY_VM, { ...PRIMARY_VM, name: 'web', ft: null }] })
  t.equal((await rest(base, dir, '/api/v1/hosts/backup-host', { method: 'PUT', body: { api: hostApi } })).status, 200)
  const pair = await page.waitForSelector('[data-vm="db"][data-host="backup-host"]', { timeout: 5000 })
  t.same(await pair!.$$eval('td', (tds) => tds.map((x) => x.textContent)), ['db', 'backup-host', 'running', 'primary', 'primary', '13 ms', '1.0 KiB/s', '3'])

  const readme = Boolean(process.env.TANDEM_CONSOLE_SCREENSHOT)
  if (readme) {
    // the README's picture: some traffic for the charts (qemu-io over NBD, a few seconds)
    const until = Date.now() + 9000
    for (let i = 0; Date.now() < until; i++) {
      await run('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${srv.nbdPort}/vm1`, '-c', `write -P ${i % 256} ${(i % 8) * 4}M 4M`, '-c', `read 0 ${16 + (i % 3) * 8}M`], { timeout: 5000 })
    }
    await page.waitForFunction(() => !/read 0 B\/s/.test(document.querySelector('#charts')?.textContent ?? ''), { timeout: 5000 }).catch(() => undefined)
  }
  const shot = (readme ? join(ROOT, 'docs', 'console.png') : join(dir, 'console.png')) as `${string}.png`
  await page.screenshot({ path: shot, fullPage: true })
  t.same([...readFileSync(shot).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], `a PNG screenshot: ${shot}`)
  // the one expected: the browser logs the refused request's 400 itself
  t.same(problems.filter((p) => !/status of 400/.test(p)), [], 'no console errors or page errors at the end')
  t.equal(problems.length, 1, 'only the refused request')
  await page.close() // its polling would slow the next tab

  // The token: a 401 asks for it (one dialog), the request is repeated with it, and every later
  // request carries it. Where the server does not check tokens yet, this tab's interception plays
  // its part (401 JSON for a mutating request without `Bearer <token>`).
  await t.test('a 401 asks for the API token, the request is repeated with it, and later requests carry it', async (t) => {
    const real = tokenOf(dir)
    const want = real ?? 'console-test-token'
    const { page: p, problems: seenProblems } = await tab(b)
    const seen: { method: string; path: string; auth?: string }[] = []
    p.on('request', (r) => seen.push({ method: r.method(), path: new URL(r.url()).pathname, auth: r.headers().authorization }))
    if (!real) {
      await p.setRequestInterception(true)
      p.on('request', (r) => {
        if (r.method() !== 'GET' && r.headers().authorization !== `Bearer ${want}`) {
          void r.respond({ status: 401, contentType: 'application/json', body: JSON.stringify({ error: { code: 'Unauthorized', message: 'this request needs the API token' } }) })
        } else void r.continue()
      })
    }
    await p.goto(`${base}/`, { waitUntil: 'load' })
    const data = '[data-disk="data"]'
    await p.waitForSelector(`${data} input[name="snapshot-name"]`, { timeout: 5000 })
    await p.type(`${data} input[name="snapshot-name"]`, 'first')
    await p.click(`${data} [data-action="create-snapshot"]`)
    await p.waitForSelector('#token-dialog[open]', { timeout: 3000 })
    await p.type('#token-input', 'wrong')
    await p.click('#token-ok')
    // a refused token: asked again, saying so
    await p.waitForFunction(() => document.querySelector('#token-dialog')?.hasAttribute('open') && /refused/.test(document.querySelector('#token-why')?.textContent ?? ''), { timeout: 3000 })
    await p.type('#token-input', want)
    await p.click('#token-ok')
    await p.waitForSelector(`${data} [data-snapshot="first"]`, { timeout: 3000 })
    const posts = () => seen.filter((x) => x.method === 'POST').map((x) => x.auth)
    t.same(posts(), [undefined, 'Bearer wrong', `Bearer ${want}`], 'without, with the wrong token, with the right one')
    t.equal(await p.evaluate(() => sessionStorage.getItem('tandem.apiToken')), want, 'kept in sessionStorage')
    await p.type(`${data} input[name="snapshot-name"]`, 'second')
    await p.click(`${data} [data-action="create-snapshot"]`)
    await p.waitForSelector(`${data} [data-snapshot="second"]`, { timeout: 3000 })
    t.equal(await p.$('#token-dialog[open]'), null, 'not asked again')
    t.equal(posts().at(-1), `Bearer ${want}`)
    const lastGet = seen.filter((x) => x.method === 'GET' && x.path.startsWith('/api/')).at(-1)
    t.equal(lastGet?.auth, `Bearer ${want}`, 'reads carry it too')
    t.same((await rest(base, dir, '/api/v1/disks/data/snapshots')).body.snapshots.map((x: { name: string }) => x.name), ['first', 'second'])
    t.same(seenProblems.filter((x) => !/status of 401/.test(x)), [], 'nothing logged but the two refusals')
  })
})
