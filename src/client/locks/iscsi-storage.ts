import { StorageError } from '../../disk-formats/errors.js'
import { decodeHeader, regionSize, SECTOR, type LockStorage } from '../../disk-formats/lock-region/index.js'
import { IscsiInitiator, type InitiatorOptions } from '../transport/iscsi/index.js'

export interface IscsiLockStorageOptions extends InitiatorOptions {
  /**
   * Bytes of the LU (from its start) the lockspace occupies. Default: what the header in the
   * LU's first sector describes, or the whole LU when it has none (a region not yet initialised).
   */
  size?: number
}

/**
 * A lockspace on an iSCSI LU, the VMFS "ATS" way: compare-and-write is SCSI COMPARE AND WRITE
 * (SBC-3), so its atomicity is the target's, against every initiator of the LU (on Tandem's own
 * target also against hosts using the lockspace file directly). Durable writes carry FUA; the
 * heartbeat (`durable: false`) is a plain WRITE. The LU must have 512-byte blocks (the lockspace's
 * sector) and must implement COMPARE AND WRITE: both are checked when it is opened.
 */
export class IscsiLockStorage implements LockStorage {
  private constructor(
    private readonly ini: IscsiInitiator,
    readonly name: string,
    readonly size: number,
  ) {}

  static async open(uri: string, o: IscsiLockStorageOptions = {}): Promise<IscsiLockStorage> {
    const ini = await IscsiInitiator.connect(uri, o)
    const name = uri.replace(/\/\/[^@/]*@/, '//') // never a CHAP secret in messages
    try {
      if (ini.blockSize !== SECTOR) {
        throw new StorageError('Unsupported', `${name}: the LU has ${ini.blockSize}-byte blocks; a lockspace needs ${SECTOR}-byte sectors`)
      }
      const head = await ini.read(0, SECTOR)
      // the probe: COMPARE AND WRITE of the first sector with itself changes nothing (a miscompare,
      // should another host write it meanwhile, is an answer too)
      await ini.compareAndWrite(0, head, head).catch((e: unknown) => {
        if (e instanceof StorageError && e.code === 'Unsupported') {
          throw new StorageError('Unsupported', `${name}: the target has no COMPARE AND WRITE (SBC-3 ATS); Tandem's lockspace needs it`, undefined, { cause: e })
        }
        throw e
      })
      let size = o.size ?? ini.size
      if (o.size === undefined) {
        try {
          size = regionSize(decodeHeader(head, name))
        } catch {
          // no lockspace yet: the manager reports what the first sector holds
        }
      }
      if (size > ini.size) throw new StorageError('OutOfRange', `${name}: the LU is ${ini.size} bytes; the lockspace needs ${size}`)
      return new IscsiLockStorage(ini, name, size)
    } catch (e) {
      await ini.close().catch(() => undefined)
      throw e
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.ini.read(offset, length)
  }

  write(offset: number, data: Buffer, opts: { durable?: boolean } = {}): Promise<void> {
    return this.ini.write(offset, data, { fua: opts.durable !== false })
  }

  compareAndWrite(offset: number, expected: Buffer, data: Buffer): Promise<boolean> {
    return this.ini.compareAndWrite(offset, expected, data)
  }

  close(): Promise<void> {
    return this.ini.close()
  }
}
