import { FtProtocolError } from '../../src/client/ft/protocol.js'

/** The FtProtocolError code `fn` throws, or 'no error'; anything else is thrown on. */
export function codeOf(fn: () => unknown): string {
  try {
    fn()
  } catch (e) {
    if (e instanceof FtProtocolError) return e.code
    throw e
  }
  return 'no error'
}
