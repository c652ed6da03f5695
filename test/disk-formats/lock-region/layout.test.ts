import t from 'tap'
import { decodeHeader, decodeRecord, decodeSlot, encodeHeader, encodeRecord, encodeSlot, regionSize } from '../../../src/disk-formats/lock-region/index.js'

t.test('round trips', async (t) => {
  const h = { maxHosts: 8, maxLocks: 16, heartbeatMs: 250, leaseMs: 2000, fenceMarginMs: 500, uuid: Buffer.alloc(16, 7) }
  const dh = decodeHeader(encodeHeader(h), 'f', regionSize(h))
  t.equal(dh.maxHosts, 8)
  t.equal(dh.leaseMs, 2000)
  const s = { state: 1, generation: 3, counter: 99, request: 5, requestShared: false, name: 'host-a' }
  t.same(decodeSlot(encodeSlot(s), 2, 'f'), { ...s, index: 2 })
  const r = { name: 'vm1', mode: 2, managed: false, generation: 7, owner: 0, ownerGeneration: 0, shared: new Set([0, 9, 1999]) }
  t.same(decodeRecord(encodeRecord(r), 4, 'f'), { ...r, index: 4 })
  t.equal(decodeSlot(Buffer.alloc(512), 0, 'f').state, 0, 'a blank slot is free')
})

t.test('corruption is reported, never trusted: magic, version, checksum, bounds, size', async (t) => {
  const h = { maxHosts: 8, maxLocks: 16, heartbeatMs: 250, leaseMs: 2000, fenceMarginMs: 500, uuid: Buffer.alloc(16) }
  const good = encodeHeader(h)
  const flip = (b: Buffer, at: number) => {
    const c = Buffer.from(b)
    c[at] ^= 0x40
    return c
  }
  t.throws(() => decodeHeader(flip(good, 0), 'ls'), { code: 'BadMagic', message: /'ls' is not a Tandem lockspace/ })
  t.throws(() => decodeHeader(flip(good, 4), 'ls'), { code: 'Unsupported', message: /version/ })
  t.throws(() => decodeHeader(flip(good, 13), 'ls'), { code: 'Corrupt', message: /bad checksum/ })
  t.throws(() => decodeHeader(good, 'ls', 12345), { code: 'Corrupt', message: /12345 bytes but its header describes/ })
  t.throws(() => decodeHeader(Buffer.from('hello world'.padEnd(512)), 'ls'), { code: 'BadMagic' })
  const slot = encodeSlot({ state: 1, generation: 1, counter: 1, request: 0, requestShared: false, name: 'x' })
  t.throws(() => decodeSlot(flip(slot, 20), 3, 'ls'), { code: 'Corrupt', message: /heartbeat slot 3: bad checksum/ })
  t.throws(() => decodeSlot(flip(slot, 0), 3, 'ls'), { code: 'Corrupt', message: /heartbeat slot 3: bad magic/ })
  const rec = encodeRecord({ name: 'r', mode: 1, managed: false, generation: 1, owner: 1, ownerGeneration: 1, shared: new Set() })
  t.throws(() => decodeRecord(flip(rec, 8), 5, 'ls'), { code: 'Corrupt', message: /lock record 5: bad checksum/ })
})
