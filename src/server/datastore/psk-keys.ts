import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { Mutex } from 'async-mutex'
import { fromSystemError, StorageError } from '../../disk-formats/errors.js'
import { writeFileAtomic } from '../../disk-formats/vmdk/index.js'

/** The datastore's TLS-PSK keys for NBD clients, relative to the datastore folder. */
export const KEYS_FILE = join('.tandem', 'keys.psk')

/**
 * A PSK identity: the client's name (qemu's `username=`, the user part of an `nbds://` URI), and
 * the name a disk's access list holds for that client. No ':' (psktool's separator), no '#'
 * (GnuTLS reads `#…` as a hex-encoded identity), no spaces; 128 bytes is far above any name in use.
 */
const IDENTITY = /^[A-Za-z0-9._@+-]{1,128}$/
/** psktool writes lower-case hex of 1 to 512 bytes (its `--keysize` range). */
const FILE_KEY = /^(?:[0-9a-fA-F]{2}){1,512}$/
/** Keys set over REST: 16 to 64 bytes (psktool's default is 32). */
const MIN_KEY = 16
const MAX_KEY = 64

export function validIdentity(identity: unknown): string {
  if (typeof identity !== 'string' || !IDENTITY.test(identity)) {
    throw new StorageError('InvalidArgument', `invalid PSK identity ${JSON.stringify(identity)}: use 1 to 128 of A-Z a-z 0-9 . _ @ + -`)
  }
  return identity
}

/** A key given as hex (as psktool writes it): an even number of hex digits, 16 to 64 bytes. */
export function validKey(hex: unknown): Buffer {
  if (typeof hex !== 'string' || !/^[0-9a-fA-F]*$/.test(hex) || hex.length % 2 !== 0 || hex.length < MIN_KEY * 2 || hex.length > MAX_KEY * 2) {
    throw new StorageError('InvalidArgument', `"key" must be ${MIN_KEY} to ${MAX_KEY} bytes as hex (${MIN_KEY * 2} to ${MAX_KEY * 2} hex digits), e.g. from psktool or \`openssl rand -hex 32\``)
  }
  return Buffer.from(hex, 'hex')
}

/** Parses psktool's format: `identity:hexkey` per line; blank lines are skipped. */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>()
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '')
    if (line.trim() === '') return
    const colon = line.indexOf(':')
    const identity = colon < 0 ? '' : line.slice(0, colon)
    const hex = line.slice(colon + 1)
    if (colon < 0 || !IDENTITY.test(identity) || !FILE_KEY.test(hex)) {
      throw new StorageError('Corrupt', `'${file}' line ${i + 1}: expected identity:hexkey (psktool's format)`, file)
    }
    keys.set(identity, Buffer.from(hex, 'hex'))
  })
  return keys
}

export function formatPskFile(keys: Map<string, Buffer>): string {
  let out = ''
  for (const [identity, key] of keys) out += `${identity}:${key.toString('hex')}\n`
  return out
}

/**
 * The NBD TLS-PSK keys of a datastore, `.tandem/keys.psk` in psktool's format (qemu's
 * tls-creds-psk and nbdkit's --tls-psk read the same file). Read once at start; every change is
 * written atomically with mode 0600 before it takes effect. Keys never leave this module except
 * to the TLS handshake (`key`).
 */
export class PskKeys {
  private readonly write = new Mutex()

  private constructor(
    readonly file: string,
    private keys: Map<string, Buffer>,
  ) {}

  static async open(datastoreDir: string): Promise<PskKeys> {
    const file = join(datastoreDir, KEYS_FILE)
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return new PskKeys(file, new Map())
      throw fromSystemError(e, file, 'Could not read')
    }
    return new PskKeys(file, parsePskFile(text, file))
  }

  identities(): string[] {
    return [...this.keys.keys()]
  }

  key(identity: string): Buffer | undefined {
    return this.keys.get(identity)
  }

  /** Adds or replaces a key; true when the identity is new. */
  async set(identity: string, key: Buffer): Promise<boolean> {
    validIdentity(identity)
    return this.write.runExclusive(async () => {
      const next = new Map(this.keys).set(identity, Buffer.from(key))
      await writeFileAtomic(this.file, formatPskFile(next), 0o600)
      const added = !this.keys.has(identity)
      this.keys = next
      return added
    })
  }

  async delete(identity: string): Promise<void> {
    await this.write.runExclusive(async () => {
      if (!this.keys.has(identity)) throw new StorageError('NotFound', `no NBD key for identity '${identity}'`)
      const next = new Map(this.keys)
      next.delete(identity)
      await writeFileAtomic(this.file, formatPskFile(next), 0o600)
      this.keys = next
    })
  }
}
