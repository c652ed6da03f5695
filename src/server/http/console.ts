import express from 'express'
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/**
 * The web console's files (index.html and its ES modules): plain browser JavaScript beside this
 * module, copied next to the compiled one by `npm run build` (scripts/build-cli.ts), so the same
 * URL resolves from src/ (tests) and from dist/ (`npm start`).
 */
export const CONSOLE_DIR = fileURLToPath(new URL('./console/', import.meta.url))

/**
 * Serves the console at `/` (GET and HEAD only; anything else falls through to the API's 404).
 * The files are fixed at build time, so they may be cached briefly; no directory listings.
 */
export function consoleRoutes(dir = CONSOLE_DIR): express.RequestHandler {
  if (!existsSync(dir)) throw new Error(`the console's files are missing: ${dir} (run npm run build)`)
  return express.static(dir, { index: 'index.html', redirect: false, fallthrough: true, maxAge: 0, dotfiles: 'ignore' })
}
