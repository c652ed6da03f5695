export { IscsiServer, LOCKSPACE_IQN } from './server.js'
export { IscsiConnection, type TargetDirectory } from './connection.js'
