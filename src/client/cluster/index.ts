/** `tandem cluster`: the integration harness (scenarios/SCENARIOS.md). */
export { loadScenario, checkScenario, type Scenario } from './scenario.js'
export { SCENARIO_SCHEMA } from './schema.js'
export { validate, type JsonSchema, type SchemaError } from './json-schema.js'
export { runScenario, clusterUp, clusterDown, pendingCleanups, type RunOptions } from './run.js'
export { twoHolders, type Verdict } from './checkers.js'
export { readHolders } from './holders.js'
export { drawTimeline, describe } from './faults.js'
export type { RunReport } from './report.js'
