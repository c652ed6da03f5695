import { CowArena } from './cow-arena.js'
import type { Machine } from './machine.js'
import type { VmState } from './state.js'

/** A VM's state at one instant while the VM runs on: its state, and its memory copy-on-write. */
export interface FrozenVm {
  instret: number
  /** VM stopped to VM running, in milliseconds */
  stunMs: number
  state: VmState
  /** guest memory as it was at `instret` (read it synchronously; see CowArena.page) */
  page(p: number): Uint8Array
  readonly pages: number
  /** pages the guest wrote first, copied into the arena so far */
  readonly copied: number
  /** done with the memory: the copy-on-write hook is off */
  release(): void
}

/**
 * The stun of a checkpoint (SPEC.md §Checkpoints), in the seed's order: stop the VM between slices
 * (its disk requests drained), arm copy-on-write on its memory, save its device state, switch its
 * disk (`switchDisk`, prepared beforehand: no file is created here), let it run again. The arena is
 * allocated before the VM stops.
 */
export async function freeze(
  m: Machine,
  o: {
    switchDisk?: () => Promise<unknown>
    /** runs in the pause, before the state is saved (an FT redundancy restore pairs the VM's outputs and log here) */
    inPause?: () => void
    now?: () => number
  } = {},
): Promise<FrozenVm> {
  const now = o.now ?? (() => performance.now())
  const arena = new CowArena(m.mem)
  const instret = await m.requestPause()
  const t0 = now()
  let state: VmState
  try {
    arena.arm()
    o.inPause?.()
    state = m.saveState()
    await o.switchDisk?.()
  } catch (e) {
    arena.release()
    m.resume()
    throw e
  }
  m.resume()
  const stunMs = now() - t0
  return {
    instret,
    stunMs,
    state,
    page: (p) => arena.page(p),
    pages: m.mem.pages,
    get copied() {
      return arena.copied
    },
    release: () => arena.release(),
  }
}
