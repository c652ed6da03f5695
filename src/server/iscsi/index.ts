export { IscsiServer } from './server.js'
export { IscsiConnection, type TargetDirectory } from './connection.js'
