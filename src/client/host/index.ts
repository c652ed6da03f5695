export { HostAgent, parseStartRequest, type HostAgentOptions, type VmInfo, type VmStartRequest, type VmState } from './agent.js'
export { createHostApp } from './http.js'
export { vmRunArgs, type VmLaunch } from './vm-command.js'
export { hostIqn, vmIqn, vmLockName, validHostName, validVmName, LOCKSPACE_IQN } from './names.js'
