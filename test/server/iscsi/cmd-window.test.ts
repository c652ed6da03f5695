import t from 'tap'
import { CMD_WINDOW, MAX_IMMEDIATE } from '../../../src/server/iscsi/limits.js'
import { pattern, within } from '../../helpers/peers.js'
import { rawTarget, opcode, sequence, write10, writersAfterClose, type RawPdu } from '../../helpers/iscsi-raw.js'

/*
 * The CmdSN window (RFC 7143 §4.2.2.1) slides as commands complete, not as they arrive: with
 * CMD_WINDOW commands running, MaxCmdSN = ExpCmdSN - 1, a command beyond it is silently ignored
 * (not executed), and one completion opens one slot. Immediate commands pass the window, up to
 * MAX_IMMEDIATE running; one more is rejected. Commands are held running by writes whose data
 * the initiator has not yet sent (InitialR2T=Yes, no immediate data: each waits on its R2T).
 */

const R2T = 0x31
const NOP_IN = 0x20
const SCSI_RESPONSE = 0x21
const REJECT = 0x3f

t.test('MaxCmdSN advances as commands complete; a command outside the window is not executed', async (t) => {
  const { c, target } = await rawTarget(t, 'w')
  await c.login(target, 'InitialR2T=Yes\0ImmediateData=Yes\0')
  const ping = async (): Promise<RawPdu> => {
    c.ping()
    const r = await c.read()
    t.equal(opcode(r), NOP_IN, 'the next PDU is the NOP-In')
    return r
  }
  let seq = sequence(await ping())
  t.equal(seq.expCmdSN, 1)
  t.equal(seq.maxCmdSN, CMD_WINDOW, `window of ${CMD_WINDOW}`)

  // CMD_WINDOW writes, each waiting for its data: every R2T shows the window not sliding
  const held: { itt: number; ttt: number; lba: number }[] = []
  for (let i = 0; i < CMD_WINDOW; i++) {
    const itt = c.command(write10(i, 1), { writeFlag: true, edtl: 512 })
    const r = await c.read()
    t.equal(opcode(r), R2T, `R2T ${i}`)
    const q = sequence(r)
    if (q.maxCmdSN !== CMD_WINDOW) t.equal(q.maxCmdSN, CMD_WINDOW, `R2T ${i}: MaxCmdSN does not move on arrival`)
    held.push({ itt, ttt: r.bhs.readUInt32BE(20), lba: i })
  }
  seq = sequence(await ping())
  t.same(seq, { ...seq, expCmdSN: CMD_WINDOW + 1, maxCmdSN: CMD_WINDOW }, 'window closed: MaxCmdSN = ExpCmdSN - 1')

  // CmdSN 65 is outside [65, 64]: a write with all its data, ignored
  const late = pattern(512, 7)
  c.command(write10(100, 1), { write: late })
  seq = sequence(await ping())
  t.equal(seq.expCmdSN, CMD_WINDOW + 1, 'its CmdSN was not taken')
  const before = await c.readBlocks(100, 1, { immediate: true })
  t.equal(before.status, 0, 'an immediate READ passes the closed window')
  t.same(before.data, Buffer.alloc(512), 'the write outside the window was not executed')

  // one completion, one slot
  const first = held.shift()!
  c.dataOut(first.itt, first.ttt, 0, pattern(512, first.lba))
  let r = await c.read()
  t.equal(opcode(r), SCSI_RESPONSE)
  t.equal(r.bhs[3], 0, 'the held write completes GOOD')
  t.equal(sequence(r).maxCmdSN, CMD_WINDOW + 1, 'its status carries the freed slot')
  seq = sequence(await ping())
  t.equal(seq.maxCmdSN, CMD_WINDOW + 1, 'MaxCmdSN advanced by the completion')
  c.command(write10(100, 1), { write: late, cmdSN: CMD_WINDOW + 1 })
  c.cmdSN = CMD_WINDOW + 2
  r = await c.read()
  t.equal(opcode(r), SCSI_RESPONSE)
  t.equal(r.bhs[3], 0, 'the same write inside the window is executed')
  t.same((await c.readBlocks(100, 1, { immediate: true })).data, late)

  // immediate commands: MAX_IMMEDIATE may run at once, the next is rejected
  const imm: { itt: number; ttt: number }[] = []
  const rejected: RawPdu[] = []
  for (let i = 0; i <= MAX_IMMEDIATE; i++) {
    c.command(write10(200 + i, 1), { writeFlag: true, edtl: 512, immediate: true })
    r = await c.read()
    if (opcode(r) === R2T) imm.push({ itt: r.bhs.readUInt32BE(16), ttt: r.bhs.readUInt32BE(20) })
    else rejected.push(r)
  }
  t.equal(imm.length, MAX_IMMEDIATE, `${MAX_IMMEDIATE} immediate writes wait for their data`)
  t.equal(rejected.length, 1, 'one more is rejected')
  t.same([opcode(rejected[0]), rejected[0].bhs[2]], [REJECT, 0x06], 'Reject: too many immediate commands')
  for (const w of imm) c.dataOut(w.itt, w.ttt, 0, pattern(512, 1))
  for (const w of [...held]) c.dataOut(w.itt, w.ttt, 0, pattern(512, w.lba))
  let good = 0
  for (let i = 0; i < imm.length + held.length; i++) {
    r = await c.read()
    if (opcode(r) === SCSI_RESPONSE && r.bhs[3] === 0) good++
  }
  t.equal(good, imm.length + held.length, 'every held write completes')
  seq = sequence(await ping())
  t.equal(seq.maxCmdSN, seq.expCmdSN + CMD_WINDOW - 1, 'the whole window is open again')
  const back = await c.readBlocks(0, CMD_WINDOW)
  t.ok(
    Array.from({ length: CMD_WINDOW }, (_, i) => back.data.subarray(i * 512, i * 512 + 512).equals(pattern(512, i))).every(Boolean),
    'the held writes landed',
  )
})

t.test('a protocol error ends the connection while commands wait for data or room, and releases the disk', async (t) => {
  const { c, api, target } = await rawTarget(t, 'e')
  await c.login(target, 'InitialR2T=Yes\0ImmediateData=Yes\0')
  c.command(write10(0, 1), { writeFlag: true, edtl: 512 })
  t.equal(opcode(await c.read()), R2T, 'a write waits for its data')
  const closed = new Promise<void>((r) => c.sock.once('close', () => r()))
  c.sock.on('data', () => {}) // drain whatever else comes
  const huge = Buffer.alloc(48)
  huge[0] = 0x01
  huge.writeUIntBE(0xffffff, 5, 3) // a data segment over MaxRecvDataSegmentLength: the connection ends
  c.sock.write(huge)
  const ended = await within(closed.then(() => true), 5000, false)
  t.ok(ended, 'the target closed the connection')
  t.equal(await writersAfterClose(api), 0, 'the disk is released')
})
