import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { ROOT } from './peers.js'

export const SCENARIOS = join(ROOT, 'scenarios')

/** The scenario library: every .json, .yaml and .yml file of scenarios/ but the schema. */
export const libraryFiles = (): string[] => readdirSync(SCENARIOS).filter((f) => /\.(json|ya?ml)$/.test(f) && f !== 'scenario.schema.json')
