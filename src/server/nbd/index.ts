export { NbdServer } from './server.js'
export { NbdConnection } from './connection.js'
export * as NBD from './protocol.js'
