export { HostAgent, parseStartRequest, type FtRoleName, type HostAgentOptions, type VmFtInfo, type VmInfo, type VmStartRequest, type VmState } from './agent.js'
export { createHostApp } from './http.js'
export { vmRunArgs, type VmFtLaunch, type VmLaunch } from './vm-command.js'
export { ftHostName, hostIqn, vmIqn, vmLockName, validHostName, validVmName, LOCKSPACE_IQN } from './names.js'
