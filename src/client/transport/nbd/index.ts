export { NbdClient, errnoToCode, type NbdClientOptions, type NbdExportInfo } from './nbd-client.js'
export { formatNbdUri, isNbdUri, parseNbdUri, NBD_DEFAULT_PORT, type NbdUri } from './uri.js'
