export { KvClient, KvNoReply, KV_DEFAULTS, KV_ETHERTYPE, type KvClientOptions, type KvReply } from './client.js'
export { AckLog, kvValue, readAckLog, valueSeq, type AckLogContents, type AckRecord } from './ack-log.js'
export { runLoad, quantile, LOAD_DEFAULTS, type LoadOptions, type LoadSummary } from './load.js'
export { runCheck, type CheckProblem, type CheckSummary } from './check.js'
