import type { Socket } from 'node:net'
import { createSecureContext, TLSSocket, type SecureContext, type TlsOptions, type TLSSocketOptions } from 'node:tls'
import { StorageError } from '../../disk-formats/errors.js'
import { ProtocolError } from '../net/tcp-service.js'

/**
 * How the NBD server offers TLS (NBD spec, "TLS support"):
 * - `required` (FORCEDTLS): every option but NBD_OPT_STARTTLS and NBD_OPT_ABORT gets
 *   NBD_REP_ERR_TLS_REQD until TLS is up;
 * - `optional` (SELECTIVETLS): TLS at the client's choice; a disk with an access list is
 *   TLS-only, and only for the identities on it;
 * - `off` (NOTLS): NBD_OPT_STARTTLS gets NBD_REP_ERR_UNSUP, and disks with an access list are
 *   not offered over NBD at all.
 */
export type TlsMode = 'required' | 'optional' | 'off'
export const TLS_MODES: readonly TlsMode[] = ['required', 'optional', 'off']

/** Where the handshake finds a client's key: null when the identity has none. */
export interface PskLookup {
  key(identity: string): Buffer | undefined
}

/**
 * TLS-PSK suites only (no certificate is configured, so nothing else can complete): TLS 1.3 with
 * its default AEAD suites (PSK with (EC)DHE, which GnuTLS clients offer), and for TLS 1.2 clients
 * the AEAD PSK suites, forward-secret ones first.
 */
export const PSK_CIPHERS = [
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_128_GCM_SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'DHE-PSK-CHACHA20-POLY1305',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
  'PSK-CHACHA20-POLY1305',
].join(':')

export interface TlsSession {
  socket: TLSSocket
  /** the PSK identity the client proved it holds the key of */
  identity: string
}

/** The server side of NBD_OPT_STARTTLS: one secure context shared by every connection. */
export class NbdTls {
  private readonly context: SecureContext | null

  constructor(
    readonly mode: TlsMode,
    private readonly keys: PskLookup,
  ) {
    if (!TLS_MODES.includes(mode)) throw new StorageError('InvalidArgument', `invalid TLS mode ${JSON.stringify(mode)}: required, optional or off`)
    this.context = mode === 'off' ? null : createSecureContext({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2', dhparam: 'auto' })
  }

  /**
   * Runs the TLS handshake on `sock` (after NBD_REP_ACK to NBD_OPT_STARTTLS was written to it).
   * Resolves once the client proved a key from `keys`; a wrong identity or key, or a peer that
   * goes away, rejects with a ProtocolError (the caller closes the connection). From then on every
   * byte goes through the returned socket.
   */
  upgrade(sock: Socket): Promise<TlsSession> {
    if (!this.context) return Promise.reject(new Error('NbdTls.upgrade: TLS is off'))
    let identity: string | null = null
    // TLSSocket honours the server's pskCallback, which @types/node lists only for tls.Server
    const options: TLSSocketOptions & Pick<TlsOptions, 'pskCallback'> = {
      isServer: true,
      secureContext: this.context,
      pskCallback: (_s, id) => {
        const key = this.keys.key(id)
        if (!key) return null
        identity = id
        return key
      },
    }
    const socket = new TLSSocket(sock, options)
    return new Promise((resolve, reject) => {
      const failed = (e: Error & { code?: string }) => {
        socket.destroy()
        reject(new ProtocolError(`TLS handshake failed${identity ? ` (identity '${identity}')` : ''}: ${e.code ?? e.message}`))
      }
      // kept after the handshake too: an error then ends the session (the connection's socket
      // queue sees it as well), and a settled promise ignores the second reject
      socket.on('error', failed)
      socket.once('close', () => failed(new Error('the peer closed the connection')))
      socket.once('secure', () => {
        if (identity === null) failed(new Error('no PSK identity was negotiated'))
        else resolve({ socket, identity })
      })
    })
  }
}
