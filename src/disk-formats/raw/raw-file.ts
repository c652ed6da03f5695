import type { FileHandle } from 'node:fs/promises'
import { type BlockDevice, type Extent, type ReadsInto, type WriteOptions, type WritesFromFile } from '../block-device.js'
import { copyRange, datasync, fileSize, openFile, preadFull, pwriteData, pwriteFull } from '../file-io.js'
import { fromSystemError } from '../errors.js'
import { dataRuns } from '../data-runs.js'
import { loadNative } from '../native.js'
import { lockImage, type ImageLock } from '../image-lock.js'

const ZERO_CHUNK = 1 << 20

/** A raw image: the file's bytes are the disk's bytes. */
export class RawFile implements BlockDevice, ReadsInto, WritesFromFile {
  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    public size: number,
    readonly readOnly: boolean,
    /** qemu-style image lock (image-lock.ts); none on a file this process created */
    private readonly lock: ImageLock | null = null,
  ) {}

  static async open(path: string, opts: { readOnly?: boolean } = {}): Promise<RawFile> {
    const readOnly = opts.readOnly ?? false
    const lock = lockImage(path, readOnly ? 'read' : 'write')
    try {
      const fh = await openFile(path, readOnly ? 'r' : 'r+')
      return new RawFile(path, fh, await fileSize(fh, path).catch(async (e) => {
        await fh.close()
        throw e
      }), readOnly, lock)
    } catch (e) {
      lock.release()
      throw e
    }
  }

  /** Creates (or truncates) a sparse raw file of `size` bytes. */
  static async create(path: string, size: number, opts: { exclusive?: boolean } = {}): Promise<RawFile> {
    const fh = await openFile(path, opts.exclusive ? 'wx+' : 'w+')
    try {
      await fh.truncate(size)
    } catch (e) {
      await fh.close()
      throw fromSystemError(e, path, 'Could not resize')
    }
    return new RawFile(path, fh, size, false)
  }

  read(offset: number, length: number): Promise<Buffer> {
    return preadFull(this.fh, this.path, offset, length)
  }

  /** Reads straight into the caller's buffer (convert reuses one per worker: no fresh buffer, no copy). */
  async readInto(offset: number, length: number, out: Buffer, at: number): Promise<void> {
    await preadFull(this.fh, this.path, offset, length, out, at)
  }

  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    await pwriteData(this.fh, this.path, offset, data)
    if (opts?.fua) await datasync(this.fh, this.path)
  }

  async writeFromFile(offset: number, length: number, fd: number, position: number): Promise<boolean> {
    await copyRange(fd, position, this.fh, this.path, offset, length)
    return true
  }

  async writeDataFromFile(offset: number, length: number, fd: number, position: number, first: number, block: number, zero: Uint8Array): Promise<void> {
    try {
      await loadNative().copyData(fd, position, length, first, block, zero, this.fh.fd, offset)
    } catch (e) {
      throw fromSystemError(e, this.path, 'Could not copy into')
    }
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    const zero = Buffer.alloc(Math.min(length, ZERO_CHUNK))
    for (let done = 0; done < length; done += zero.length) {
      const n = Math.min(zero.length, length - done)
      await pwriteFull(this.fh, this.path, offset + done, n === zero.length ? zero : zero.subarray(0, n))
    }
  }

  /** Discarded bytes keep their content: allowed, since discard makes content unspecified. */
  async discard(): Promise<void> {}

  flush(): Promise<void> {
    return datasync(this.fh, this.path)
  }

  /** Holes of the file (SEEK_HOLE) read as zeros and are not data, as qemu-img map shows a raw file. */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return dataRuns(this.fh.fd, offset, offset + length).map((r) => ({
      offset: r.offset,
      length: r.length,
      data: r.data,
      zero: !r.data,
      depth: 0,
      present: true,
      hostOffset: r.offset,
      file: this.path,
    }))
  }

  async close(): Promise<void> {
    this.lock?.release()
    await this.fh.close()
  }
}
