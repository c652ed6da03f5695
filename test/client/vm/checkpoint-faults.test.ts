import t from 'tap'
import { randomFillSync } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { readCheckpoint, writeCheckpoint, type CheckpointSource } from '../../../src/client/vm/checkpoint-file.js'
import { fsFaults } from '../../helpers/fs-faults.js'
import { tmp } from '../../helpers/peers.js'

/**
 * A checkpoint write stopped at every one of its file changes — by a full file system (ENOSPC)
 * or as by a kill (every later change fails, its temporary file stays) — leaves the previous
 * checkpoint, complete; a full file system is reported as a CheckpointError 'io' naming ENOSPC
 * and the temporary file is removed.
 */
const faults = await fsFaults()
const PAGE = 4096
const PAGES = 3000 // ~12 MiB: the memory takes two of the writer's 8 MiB writes

function source(seed: number): CheckpointSource {
  const mem = randomFillSync(new Uint8Array(PAGES * PAGE))
  mem.fill(0, 0, 100 * PAGE)
  mem[0] = seed
  return { memoryBytes: mem.length, imageSha256: Buffer.alloc(32, 1), instret: seed, state: Buffer.from(`state ${seed}`), pages: PAGES, page: (i) => mem.subarray(i * PAGE, (i + 1) * PAGE) }
}

for (const mode of ['ENOSPC', 'kill'] as const) {
  t.test(`a write stopped at each of its file changes (${mode}) leaves the previous checkpoint`, async (t) => {
    const dir = tmp(t)
    const file = join(dir, 'vm.ckpt')
    await writeCheckpoint(file, source(1))
    const before = readFileSync(file)
    const next = source(2)
    let allow = 0
    for (; ; allow++) {
      faults.arm(allow, mode)
      const err = await writeCheckpoint(file, next).then(
        () => null,
        (e: unknown) => e,
      )
      faults.disarm()
      if (err === null) break
      t.match(err, { name: 'CheckpointError', code: 'io', message: mode === 'ENOSPC' ? /^cannot write the checkpoint '.*vm\.ckpt': ENOSPC/ : /^cannot write the checkpoint/ }, `stopped after ${allow} changes: ${(err as Error).message}`)
      const ck = await readCheckpoint(file)
      t.equal(ck.header.instret, 1, 'the previous checkpoint reads')
      await ck.close()
      t.ok(readFileSync(file).equals(before), 'byte for byte')
      if (mode === 'ENOSPC') t.same(readdirSync(dir), ['vm.ckpt'], 'the temporary file is removed')
    }
    t.ok(allow >= 6, `the write makes ${allow} changes before it is published (open, header, state, memory, trailer, sync, rename)`)
    const ck = await readCheckpoint(file)
    t.equal(ck.header.instret, 2, 'unhindered, the new checkpoint is published')
    await ck.loadMemory(new Uint8Array(PAGES * PAGE))
    t.same(readdirSync(dir), ['vm.ckpt'], 'and the temporary files of stopped writes are gone')
  })
}
