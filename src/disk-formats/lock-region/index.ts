export * from './layout.js'
