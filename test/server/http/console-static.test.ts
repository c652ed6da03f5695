import t from 'tap'
import { readdirSync } from 'node:fs'
import { CONSOLE_DIR } from '../../../src/server/http/console.js'
import { startServer } from '../../helpers/server.js'

t.test('the console\'s files at /: each with its type; anything else is the API\'s 404 JSON', async (t) => {
  const s = await startServer(t)
  const get = (path: string, method = 'GET') => fetch(`http://127.0.0.1:${s.httpPort}${path}`, { method })
  const root = await get('/')
  t.equal(root.status, 200)
  t.match(root.headers.get('content-type'), /^text\/html/)
  t.match(await root.text(), /<script type="module" src="main.js">/)
  const types: Record<string, RegExp> = { js: /^(text|application)\/javascript/, css: /^text\/css/, html: /^text\/html/ }
  const files = readdirSync(CONSOLE_DIR)
  t.ok(files.length >= 8, `${files.length} files`)
  for (const f of files) {
    const r = await get(`/${f}`)
    t.equal(r.status, 200, f)
    t.match(r.headers.get('content-type'), types[f.split('.').pop()!], `${f}: a type the browser runs (module scripts must be JavaScript)`)
    await r.arrayBuffer()
  }
  for (const [method, path] of [['POST', '/'], ['DELETE', '/main.js'], ['GET', '/nope.js'], ['GET', '/%2e%2e/package.json'], ['GET', '/..%2f..%2fpackage.json'], ['GET', '/%00'], ['GET', '/%'], ['GET', '/main.js/'], ['GET', '/.tandem/lockspace']]) {
    const r = await get(path, method)
    const body = await r.text()
    // a mutating method without the API token is refused (401) before its path is looked at
    t.ok([404, 400, 405].includes(r.status) || (method !== 'GET' && r.status === 401), `${method} ${path}: ${r.status}`)
    t.match(JSON.parse(body), { error: { code: String, message: String } }, `${method} ${path}: a JSON error`)
    t.notMatch(body, /at .*\.js:\d+/, 'no stack trace')
  }
})
