import { existsSync, readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The committed guest images (built by scripts/build-guests.sh), found from src/ or dist/src/. */
const HERE = dirname(fileURLToPath(import.meta.url))
const GUESTS = [join(HERE, '..', '..', '..', 'guests'), join(HERE, '..', '..', '..', '..', 'guests')].find((d) => existsSync(join(d, 'cpu.elf'))) ?? join(HERE, '..', '..', '..', '..', 'guests')
export const GUEST_NAMES = ['cpu', 'memdirty', 'diskio', 'disklog', 'ticker', 'kvstore', 'noisy', 'memsweep', 'cpu10']

/** A guest name (`cpu`) → its committed image; anything else is taken as a file. */
export function guestPath(guest: string): string {
  if (/^[a-z0-9_-]+$/.test(guest) && !existsSync(guest)) {
    const p = join(GUESTS, `${guest}.elf`)
    if (existsSync(p)) return p
    throw new Error(`no guest named '${guest}' (guests: ${GUEST_NAMES.join(', ')}; or give a file)`)
  }
  return guest
}

/** The committed guest whose image has this SHA-256 (a checkpoint or log names its image so). */
export function guestForImage(sha: Buffer): string {
  for (const g of GUEST_NAMES) {
    const p = join(GUESTS, `${g}.elf`)
    if (existsSync(p) && createHash('sha256').update(readFileSync(p)).digest().equals(sha)) return g
  }
  throw new Error(`no committed guest has the image ${sha.toString('hex').slice(0, 16)}…: give --guest FILE`)
}
