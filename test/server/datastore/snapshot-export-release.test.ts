import t from 'tap'
import { randomBytes } from 'node:crypto'
import { startServer } from '../../helpers/server.js'
import { NbdClient } from '../../../src/client/transport/nbd/index.js'

const MiB = 1 << 20

t.test('a snapshot export whose NBD client has closed is released at once: the snapshot deletes right after, its frozen layer still unsynced', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 64 * MiB)
  const live = await NbdClient.connect(s.uri('d'))
  t.teardown(() => live.close())
  for (let i = 0; i < 5; i++) {
    // tens of MB written and not flushed: the create freezes the top without a sync
    for (let o = 0; o < 48 * MiB; o += 4 * MiB) await live.write(o, randomBytes(4 * MiB))
    await s.ds.createSnapshot('d', `s${i}`)
    const snap = await NbdClient.connect(s.uri(`d@s${i}`), { readOnly: true })
    t.equal((await snap.read(0, 4096)).length, 4096)
    await snap.close()
    await t.resolves(s.ds.deleteSnapshot('d', `s${i}`), `round ${i}: deleted as soon as the client's close returned`)
  }
})
