import t from 'tap'
import { HBA_SLOT_BYTES, HbaCompletion, HbaRequest } from '../../../src/client/vm/hba-slot.js'

t.test('golden bytes: the HBA ring slot as SPEC.md lays it out', async (t) => {
  t.equal(HBA_SLOT_BYTES, 64)
  const slot = Buffer.alloc(64)
  const cdb = Buffer.from([0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0])
  cdb.copy(slot, 0)
  slot.writeUInt32LE(0x80001000, 16)
  slot.writeUInt32LE(512, 20)
  slot[24] = cdb.length
  slot[25] = 2
  const r = HbaRequest.decode(slot)
  t.same(r.cdb.subarray(0, r.cdbLength), cdb, 'CDB at 0, its length at 24')
  t.same({ dataAddr: r.dataAddr, dataLength: r.dataLength, direction: r.direction }, { dataAddr: 0x80001000, dataLength: 512, direction: 2 })

  const before = Buffer.from(slot)
  const sense = Buffer.alloc(32)
  Buffer.from([0x70, 0, 5, 0, 0, 0, 0, 10]).copy(sense)
  HbaCompletion.encode({ status: 2, done: 1, senseLength: 8, sense }, slot)
  t.same(slot.subarray(0, 28), before.subarray(0, 28), 'a completion leaves the request fields alone')
  t.same([slot[28], slot[29], slot.readUInt16LE(30)], [2, 1, 8], 'status at 28, done at 29, sense length at 30')
  t.same(slot.subarray(32, 64), sense, 'sense data at 32..64')
})
