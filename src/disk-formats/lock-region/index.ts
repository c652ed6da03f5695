export * from './layout.js'
export { crc32c } from './crc32c.js'
