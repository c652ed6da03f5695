import t from 'tap'
import request from 'supertest'
import { pino } from 'pino'
import { randomBytes } from 'node:crypto'
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Datastore, PskKeys } from '../../../src/server/datastore/index.js'
import { createApp } from '../../../src/server/http/app.js'
import { AUTH_OFF_FOR_TESTS } from '../../../src/server/http/auth.js'
import { Metrics } from '../../../src/server/metrics.js'
import { serve } from '../../../src/server/serve.js'
import { tmp } from '../../helpers/peers.js'

async function app(t: { teardown(fn: () => unknown): void }) {
  const dir = tmp(t, 'tandem-keys-')
  const ds = await Datastore.open(dir)
  t.teardown(() => ds.close())
  const nbdKeys = await PskKeys.open(dir)
  const a = createApp({ ds, nbdKeys, log: pino({ level: 'silent' }), metrics: new Metrics({ processMetrics: false }), advertise: { host: '127.0.0.1', nbdPort: 10809, iscsiPort: 3260 }, auth: AUTH_OFF_FOR_TESTS })
  return { a, nbdKeys, file: join(dir, '.tandem', 'keys.psk'), dir }
}

const isError = (code: string) => (res: request.Response) => {
  if (res.body?.error?.code !== code || typeof res.body.error.message !== 'string') {
    throw new Error(`expected error ${code}, got ${JSON.stringify(res.body)}`)
  }
}

t.test('PUT, GET, DELETE /api/v1/nbd/keys: identities only, never a key', async (t) => {
  const { a, nbdKeys, file } = await app(t)
  t.same((await request(a).get('/api/v1/nbd/keys').expect(200)).body, { identities: [] })
  const k1 = randomBytes(32).toString('hex')
  const put = await request(a).put('/api/v1/nbd/keys/alice').send({ key: k1 }).expect(201)
  t.same(put.body, { identity: 'alice' })
  t.equal(statSync(file).mode & 0o777, 0o600, 'the keys file is mode 0600')
  t.equal(readFileSync(file, 'utf8'), `alice:${k1}\n`, "psktool's format")
  const k2 = randomBytes(16).toString('hex').toUpperCase()
  await request(a).put('/api/v1/nbd/keys/bob.example').send({ key: k2 }).expect(201)
  const k3 = randomBytes(64).toString('hex')
  const again = await request(a).put('/api/v1/nbd/keys/alice').send({ key: k3 }).expect(200)
  t.notMatch(again.text, k3, 'the key is not echoed')
  const got = await request(a).get('/api/v1/nbd/keys').expect(200)
  t.same(got.body, { identities: ['alice', 'bob.example'] })
  t.notMatch(got.text, /[0-9a-f]{32}/i, 'no key in the listing')
  t.equal(readFileSync(file, 'utf8'), `alice:${k3}\nbob.example:${k2.toLowerCase()}\n`, 'a replaced key is rewritten in place')
  t.equal(nbdKeys.key('alice')!.toString('hex'), k3, 'the new key is the one the handshake uses')
  await request(a).delete('/api/v1/nbd/keys/alice').expect(204)
  t.equal(nbdKeys.key('alice'), undefined)
  t.equal(readFileSync(file, 'utf8'), `bob.example:${k2.toLowerCase()}\n`)
  t.same(readdirSync(join(file, '..')).filter((f) => f.includes('keys.psk')), ['keys.psk'], 'no temporary file left')
  const o = (await request(a).get('/api/v1/openapi.json').expect(200)).body
  t.same(Object.keys(o.paths['/api/v1/nbd/keys/{identity}']).sort(), ['delete', 'parameters', 'put'], 'the OpenAPI document has the key endpoints')
  t.ok(o.paths['/api/v1/nbd/keys'].get)
})

t.test('bad identities and keys: 4xx JSON errors, nothing written', async (t) => {
  const { a, file } = await app(t)
  const key = randomBytes(32).toString('hex')
  for (const id of ['a:b', '%23hex', 'sp%20ace', 'x'.repeat(129), 'caf%C3%A9']) {
    await request(a).put(`/api/v1/nbd/keys/${id}`).send({ key }).expect(400).expect(isError('InvalidArgument'))
  }
  for (const bad of [undefined, 42, '', 'zz'.repeat(32), 'abc', randomBytes(15).toString('hex'), randomBytes(65).toString('hex')]) {
    await request(a).put('/api/v1/nbd/keys/alice').send(bad === undefined ? {} : { key: bad }).expect(400).expect(isError('InvalidArgument'))
  }
  await request(a).put('/api/v1/nbd/keys/alice').set('content-type', 'application/json').send('[1,2]').expect(400).expect(isError('InvalidArgument'))
  await request(a).put('/api/v1/nbd/keys/alice').set('content-type', 'application/json').send('{"key":').expect(400).expect(isError('InvalidArgument'))
  await request(a).delete('/api/v1/nbd/keys/nobody').expect(404).expect(isError('NotFound'))
  await request(a).delete('/api/v1/nbd/keys/a:b').expect(400).expect(isError('InvalidArgument'))
  t.throws(() => statSync(file), 'no keys file was created')
})

t.test('a keys file psktool could not have written stops the server at start, naming the line', async (t) => {
  const dir = tmp(t, 'tandem-keys-')
  mkdirSync(join(dir, '.tandem'))
  const good = randomBytes(32).toString('hex')
  for (const [text, line] of [
    [`alice:${good}\nbob ${good}\n`, 2],
    [`alice:${good}\n\nbob:xyz\n`, 3],
    [`:${good}\n`, 1],
    [`a#b:${good}\n`, 1],
  ] as const) {
    writeFileSync(join(dir, '.tandem', 'keys.psk'), text)
    await t.rejects(serve({ datastore: dir, listen: '127.0.0.1', httpPort: 0, nbdPort: 0, iscsiPort: 0 }, pino({ level: 'silent' })), {
      code: 'Corrupt',
      message: new RegExp(`keys\\.psk' line ${line}: expected identity:hexkey`),
    })
  }
  writeFileSync(join(dir, '.tandem', 'keys.psk'), `alice:${good}\r\n\nbob:${good.toUpperCase()}`)
  const k = await PskKeys.open(dir)
  t.same(k.identities(), ['alice', 'bob'], 'CRLF, blank lines, a missing last newline and upper-case hex are read')
})
