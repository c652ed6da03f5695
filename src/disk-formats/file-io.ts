import { open, type FileHandle } from 'node:fs/promises'
import { fromSystemError } from './errors.js'

/** Opens a file, turning OS errors into StorageErrors that name the file. */
export async function openFile(path: string, flags: string): Promise<FileHandle> {
  try {
    return await open(path, flags)
  } catch (e) {
    throw fromSystemError(e, path, 'Could not open')
  }
}

/** pread that fills `length` bytes, zero-filling past end of file. */
export async function preadFull(fh: FileHandle, file: string, position: number, length: number, into?: Buffer, at = 0): Promise<Buffer> {
  const buf = into ?? Buffer.alloc(length)
  let done = 0
  try {
    while (done < length) {
      const { bytesRead } = await fh.read(buf, at + done, length - done, position + done)
      if (bytesRead === 0) {
        buf.fill(0, at + done, at + length)
        break
      }
      done += bytesRead
    }
  } catch (e) {
    throw fromSystemError(e, file, 'Could not read')
  }
  return buf
}

/** pwrite that writes every byte or throws. */
export async function pwriteFull(fh: FileHandle, file: string, position: number, data: Buffer): Promise<void> {
  let done = 0
  try {
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, position + done)
      done += bytesWritten
    }
  } catch (e) {
    throw fromSystemError(e, file, 'Could not write')
  }
}

export async function fileSize(fh: FileHandle, file: string): Promise<number> {
  try {
    return (await fh.stat()).size
  } catch (e) {
    throw fromSystemError(e, file, 'Could not stat')
  }
}

export async function datasync(fh: FileHandle, file: string): Promise<void> {
  try {
    await fh.datasync()
  } catch (e) {
    throw fromSystemError(e, file, 'Could not flush')
  }
}

const ZEROS = Buffer.alloc(1 << 16)

/** True when every byte of buf[start, end) is zero (memcmp against a zero page, 64 KiB at a time). */
export function isZero(buf: Buffer, start = 0, end = buf.length): boolean {
  for (let i = start; i < end; i += ZEROS.length) {
    const n = Math.min(ZEROS.length, end - i)
    if (buf.compare(ZEROS, 0, n, i, i + n) !== 0) return false
  }
  return true
}

/** Little-endian uint32 entries of a buffer, copied into an aligned array. */
export function toU32(buf: Buffer): Uint32Array {
  const out = new Uint32Array(buf.length >> 2)
  for (let i = 0; i < out.length; i++) out[i] = buf.readUInt32LE(i * 4)
  return out
}
