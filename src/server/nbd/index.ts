export { NbdServer } from './server.js'
export { NbdConnection } from './connection.js'
export * as NBD from './protocol.js'
export { NbdTls, TLS_MODES, type TlsMode, type PskLookup } from './tls.js'
