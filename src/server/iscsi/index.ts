export { IscsiServer, LOCKSPACE_IQN } from './server.js'
export { IscsiConnection } from './connection.js'
export type { TargetDirectory } from './login.js'
