import t from 'tap'
import { IscsiInitiator } from '../../../src/client/transport/iscsi/index.js'
import { pattern } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { tcpProxy, type SeenPdu } from '../../helpers/tcp-proxy.js'

const IQN = 'iqn.2026-11.local.tandem:'
const SCSI_RESPONSE = 0x21
const TASK_MGMT_REQUEST = 0x02
const TASK_MGMT_RESPONSE = 0x22

/*
 * A proxy between the initiator and Tandem's target withholds the answer of one command (the
 * target did run it), and, per case, the answers to task management: the initiator's timeout
 * path takes ABORT TASK, then LOGICAL UNIT RESET, then a new connection, and the command is
 * answered once. Time limits are real (short for the command, generous for task management, so
 * a slow machine adds steps at worst, never a failure).
 */
const cases: { name: string; tmfDropped: number; want: 'aborts' | 'resets' | 'drops' }[] = [
  { name: 'ABORT TASK answered: the command is sent again', tmfDropped: 0, want: 'aborts' },
  { name: 'ABORT TASK unanswered: LOGICAL UNIT RESET, then sent again', tmfDropped: 1, want: 'resets' },
  { name: 'no task management answered: the connection is dropped and the session recovered', tmfDropped: Infinity, want: 'drops' },
]

for (const c of cases) {
  t.test(c.name, async (t) => {
    const s = await startServer(t)
    await s.ds.createDisk('d', 4 << 20)
    let armed = false
    let tmfDropped = 0
    const functions: number[] = []
    const proxy = await tcpProxy(t, s.iscsiPort, {
      dropDown: (p: SeenPdu) => {
        if (armed && p.opcode === SCSI_RESPONSE) {
          armed = false
          return true
        }
        if (p.opcode === TASK_MGMT_RESPONSE && tmfDropped < c.tmfDropped && proxy.connections === 1) {
          tmfDropped++
          return true
        }
        return false
      },
      seenUp: (p) => void (p.opcode === TASK_MGMT_REQUEST && functions.push(p.bhs[1] & 0x7f)),
    })
    const ini = await IscsiInitiator.connect(`iscsi://127.0.0.1:${proxy.port}/${IQN}d/0`, { commandTimeoutMs: 1000, taskManagementTimeoutMs: 3000 })
    const data = pattern(64 << 10, 3)
    armed = true
    let answers = 0
    await ini.write(1 << 20, data).then(() => answers++)
    t.equal(answers, 1, 'the write is answered, once')
    t.equal(armed, false, 'its first answer was withheld')
    t.ok(functions.includes(1), 'ABORT TASK was sent')
    t.ok(ini.recoveries[c.want] >= 1, `the escalation reached ${c.want}`)
    if (c.want !== 'aborts') t.ok(functions.includes(5), 'LOGICAL UNIT RESET was sent')
    if (c.want === 'drops') t.equal(ini.recoveries.reconnects, 1, 'the session logged in again')
    else t.equal(ini.recoveries.reconnects, 0, 'on the same connection')
    t.ok((await ini.read(1 << 20, data.length)).equals(data), 'the write reads back')
    await ini.close()
  })
}

t.test('COMPARE AND WRITE whose answer was withheld: sent again, it miscompares against its own write and reports success', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 4 << 20)
  let armed = false
  const proxy = await tcpProxy(t, s.iscsiPort, {
    dropDown: (p) => {
      if (armed && p.opcode === SCSI_RESPONSE) {
        armed = false
        return true
      }
      return false
    },
  })
  const ini = await IscsiInitiator.connect(`iscsi://127.0.0.1:${proxy.port}/${IQN}d/0`, { commandTimeoutMs: 1000, taskManagementTimeoutMs: 3000 })
  const mine = Buffer.alloc(512, 0x5a)
  armed = true
  t.equal(await ini.compareAndWrite(0, Buffer.alloc(512), mine), true, 'the first instance wrote: success')
  t.equal(armed, false, 'its answer was withheld')
  t.ok(ini.recoveries.aborts >= 1, 'it was aborted and sent again')
  t.ok((await ini.read(0, 512)).equals(mine), 'the block holds what it wrote')
  // a real miscompare of a command sent again stays a miscompare
  armed = true
  t.equal(await ini.compareAndWrite(0, Buffer.alloc(512), Buffer.alloc(512, 1)), false, 'another writer\'s bytes: a miscompare')
  t.ok((await ini.read(0, 512)).equals(mine), 'nothing written')
  await ini.close()
})
