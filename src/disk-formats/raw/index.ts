export { RawFile } from './raw-file.js'
