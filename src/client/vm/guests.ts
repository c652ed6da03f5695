import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The committed guest images (built by scripts/build-guests.sh), found from src/ or dist/src/. */
const HERE = dirname(fileURLToPath(import.meta.url))
const GUESTS = [join(HERE, '..', '..', '..', 'guests'), join(HERE, '..', '..', '..', '..', 'guests')].find((d) => existsSync(join(d, 'cpu.elf'))) ?? join(HERE, '..', '..', '..', '..', 'guests')
export const GUEST_NAMES = ['cpu', 'memdirty', 'diskio', 'disklog', 'ticker', 'kvstore']

/** A guest name (`cpu`) → its committed image; anything else is taken as a file. */
export function guestPath(guest: string): string {
  if (/^[a-z0-9_-]+$/.test(guest) && !existsSync(guest)) {
    const p = join(GUESTS, `${guest}.elf`)
    if (existsSync(p)) return p
    throw new Error(`no guest named '${guest}' (guests: ${GUEST_NAMES.join(', ')}; or give a file)`)
  }
  return guest
}
