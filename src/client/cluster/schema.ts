import type { JsonSchema } from './json-schema.js'

const int = (minimum: number, maximum: number, description: string): JsonSchema => ({ type: 'integer', minimum, maximum, description })
const NAME = '^[a-z0-9][a-z0-9.-]{0,62}$'
const name = (description: string): JsonSchema => ({ type: 'string', pattern: NAME, description })
/** when an event happens, ms after time 0 (the workloads started, every kv load has its first acknowledgement): a fixed time, or [min, max] drawn from the run's seed */
const at: JsonSchema = {
  description: 'ms after time 0 (the workloads started and every kv load has its first acknowledgement): a number, or [min, max] drawn from the run\'s seed',
  oneOf: [int(0, 3_600_000, 'a fixed time'), { type: 'array', items: int(0, 3_600_000, 'a bound'), minItems: 2, maxItems: 2 }],
}
const forMs = int(1, 3_600_000, 'how long the fault lasts (then it is lifted: SIGCONT, heal, no delay)')
const event = (fault: string, description: string, props: Record<string, JsonSchema>, required: string[]): JsonSchema => ({
  type: 'object',
  description,
  properties: { fault: { const: fault }, atMs: at, ...props },
  required: ['fault', 'atMs', ...required],
  additionalProperties: false,
})
const kind = (k: string, description: string, props: Record<string, JsonSchema>, required: string[]): JsonSchema => ({
  type: 'object',
  description,
  properties: { kind: { const: k }, ...props },
  required: ['kind', ...required],
  additionalProperties: false,
})
const TARGET = '^(vm:[a-z0-9][a-z0-9.-]*(:(primary|backup))?|host:[a-z0-9][a-z0-9.-]*|lock-holder|server)$'

/** The scenario file's JSON Schema (`tandem cluster schema` prints it; scenarios/scenario.schema.json is this). */
export const SCENARIO_SCHEMA: JsonSchema = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://tandem.local/schemas/scenario.schema.json',
  title: 'tandem cluster scenario',
  type: 'object',
  required: ['name', 'hosts', 'workloads'],
  additionalProperties: false,
  properties: {
    $schema: { type: 'string', description: 'the schema this file follows (ignored)' },
    name: name('the scenario\'s name (report titles, JUnit suite)'),
    description: { type: 'string' },
    network: { enum: ['auto', 'loopback', 'netns'], description: 'auto (default): network namespaces on a bridge the harness makes when root, loopback ports otherwise' },
    lease: {
      type: 'object',
      description: 'the lockspace\'s timings (default 200/2500/700 ms: takeovers in seconds, yet a busy machine does not fence a live host)',
      additionalProperties: false,
      properties: { heartbeatMs: int(50, 10_000, 'renewal interval'), leaseMs: int(200, 60_000, 'a silent host\'s locks may be taken after this'), fenceMarginMs: int(50, 30_000, 'holders stop this long before') },
    },
    ftLossMs: int(20, 60_000, 'silence on a pair\'s FT channel that counts as losing the peer (the hosts\' TANDEM_FT_LOSS_MS; default 1500: a busy machine\'s scheduling stalls do not split a pair, a killed side is seen at once as its socket closes)'),
    server: {
      type: 'object',
      additionalProperties: false,
      properties: {
        faultInjection: { type: 'boolean', description: 'start tandem serve --fault-injection (disk faults need it)' },
        disks: { type: 'array', items: { type: 'object', additionalProperties: false, required: ['name', 'size'], properties: { name: name('the datastore disk'), size: { type: 'string', pattern: '^[0-9]+[KMG]?$', description: 'e.g. 64M' } } } },
      },
    },
    hosts: {
      type: 'array',
      minItems: 1,
      maxItems: 8,
      description: 'tandem host agents, each in a namespace of its own (or on loopback)',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name'],
        properties: {
          name: name('the host\'s lockspace name'),
          dosGuard: { enum: ['off', 'monitor', 'on'], description: 'tandem host --dos-guard (default off): meter its plain VMs\' switch ports; on: suspend a flooded VM (lowest priority first), resume it after a quiet cooldown' },
          dosBounds: { type: 'string', pattern: '^[A-Za-z]+=[0-9.]+(,[A-Za-z]+=[0-9.]+)*$', description: 'tandem host --dos-bounds, KEY=VALUE,... (e.g. cooldownMs=1000)' },
          address: { type: 'string', description: 'reserved: a real machine\'s agent (http://ADDR:PORT), not started by the harness; not supported yet' } },
      },
    },
    vms: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'guest', 'host'],
        properties: {
          name: name('the VM'),
          guest: { enum: ['kvstore', 'disklog', 'ticker', 'diskio'], description: 'a committed guest' },
          host: name('the host that runs it (the primary of a pair)'),
          ft: name('run it as a fault-tolerant pair: the backup on this host'),
          disk: name('a disk of server.disks (over iSCSI)'),
          mac: { type: 'string', pattern: '^([0-9a-f]{2}:){5}[0-9a-f]{2}$' },
          backupReads: { enum: ['disk', 'log'] },
          priority: int(0, 1000, 'under a DoS guard, lower priorities are suspended first (default 100)'),
        },
      },
    },
    workloads: {
      type: 'array',
      minItems: 1,
      items: {
        oneOf: [
          kind('kv', 'tandem kv load against a kvstore VM; every acknowledged SET goes to acked.jsonl', { vm: name('the kvstore VM'), keys: int(1, 1024, 'keys k0..'), rate: int(1, 5000, 'SETs per second'), durationMs: int(100, 3_600_000, 'how long'), window: int(1, 64, 'outstanding requests') }, ['vm', 'durationMs']),
          kind('lock', 'a lock-contention loop: contenders each `tandem lock run LOCK` a command that appends HOLDER GENERATION lines while it holds the lock', { lock: name('the lock'), contenders: int(2, 8, 'processes contending'), holdMs: int(10, 60_000, 'how long each holds it'), durationMs: int(100, 3_600_000, 'how long the loop goes on') }, ['lock', 'durationMs']),
          kind('fio', 'fio over NBD on a datastore disk, writing verifiable blocks (crc32c), read back and verified at the end', { disk: name('a disk of server.disks'), sizeMiB: int(1, 1024, 'the region written'), bs: { type: 'string', pattern: '^[0-9]+[kKmM]?$' }, durationMs: int(100, 3_600_000, 'how long it writes') }, ['disk', 'durationMs']),
        ],
      },
    },
    timeline: {
      type: 'array',
      description: 'faults, each at a time after the workloads start',
      items: {
        oneOf: [
          event('kill', 'SIGKILL a process group (a VM side, a host with its VMs, a lock holder, the server)', { target: { type: 'string', pattern: TARGET } }, ['target']),
          event('stop', 'SIGSTOP a process group, SIGCONT after forMs', { target: { type: 'string', pattern: TARGET }, forMs }, ['target', 'forMs']),
          event('partition', 'cut a node off (node: netns: its link down; loopback: its storage paths only), a host from its storage (pair [HOST, "server"]: its HTTP and iSCSI paths blackholed, in both modes) or two hosts from each other (pair of hosts: netns only), heal after forMs', { node: name('a host, or "server"'), pair: { type: 'array', items: name('a host, or "server"'), minItems: 2, maxItems: 2 }, forMs }, ['forMs']),
          event('link', 'delay, jitter and loss on a path, through the user-space proxies: "switch" (every VM and client frame) or "storage:HOST" (a host\'s HTTP and iSCSI to the server; no loss on TCP)', { path: { type: 'string', pattern: '^(switch|storage:[a-z0-9][a-z0-9.-]*)$' }, delayMs: int(0, 60_000, 'added delay'), jitterMs: int(0, 60_000, 'the delay varies by up to this, redrawn every 100 ms (order kept)'), loss: { type: 'number', minimum: 0, maximum: 1, description: 'share of frames dropped (switch only)' }, forMs }, ['path', 'forMs']),
          event('disk', 'a disk fault through the server\'s BlockDevice filters (server.faultInjection)', { disk: name('a disk of server.disks'), mode: { enum: ['delay', 'error', 'stall'] }, ms: int(0, 60_000, 'delay: per request'), op: { enum: ['read', 'write', 'any'] }, forMs }, ['disk', 'mode', 'forMs']),
          event('flood', 'tandem kv flood at a VM: small frames at pps from a MAC of its own for forMs (then the fault waits up to 30 s for the VM\'s host to resume it, when its DoS guard suspended it)', { target: { type: 'string', pattern: '^vm:[a-z0-9][a-z0-9.-]*$', description: 'vm:NAME, a VM alone (the guard meters plain VMs)' }, pps: int(1, 200_000, 'frames a second (default 5000)'), size: int(14, 1514, 'bytes a frame (default 60: the smallest Ethernet frame)'), forMs }, ['target', 'forMs']),
          event('clock', 'a clock jump on a host: its wall clock (the agent\'s, its VMs\', the lock contenders run on it) steps by jumpMs and stays so; the host runs with --fault-injection. Leases and heartbeats are on monotonic time', { target: { type: 'string', pattern: '^host:[a-z0-9][a-z0-9.-]*$', description: 'host:NAME' }, jumpMs: int(-3_600_000, 3_600_000, 'the step, ms (negative: back)') }, ['target', 'jumpMs']),
        ],
      },
    },
    checkers: {
      type: 'array',
      items: {
        oneOf: [
          kind('kv-acked', 'no acknowledged write lost: tandem kv check on the VM after the load (each key holds its last acknowledged value or a later one sent)', { vm: name('the kvstore VM'), forgeAck: { type: 'boolean', description: 'test input: add an acknowledgement the VM never gave (the checker must fail)' } }, ['vm']),
          kind('failover', 'a pair\'s backup is live within withinMs of the primary\'s kill/stop/partition', { vm: name('the pair'), withinMs: int(1, 600_000, 'the bound') }, ['vm', 'withinMs']),
          kind('single-holder', 'never two holders of the lock: from the holders\' own records, each generation\'s lines form one run and generations only grow', { lock: name('the lock'), forgeHolder: { type: 'boolean', description: 'test input: add a line of an older generation after a newer one (the checker must fail)' } }, ['lock']),
          kind('takeover', 'after a lock holder is stopped or killed, another holds the lock within withinMs', { lock: name('the lock'), withinMs: int(1, 600_000, 'the bound') }, ['lock', 'withinMs']),
          kind('fio-verify', 'every block fio wrote reads back with its checksum (disk patterns)', { disk: name('the disk') }, ['disk']),
          kind('dos-suspended', 'from the host\'s DoS guard events: the flooded VM was detected and suspended after the flood started (detection within withinMs, when given) and resumed after it ended, and no other VM was suspended', { vm: name('the flooded VM'), withinMs: int(1, 600_000, 'bound on detection after the flood\'s first frame') }, ['vm']),
          kind('disks-clean', 'the server stopped: every disk\'s VMDK passes qemu-img check (tandem\'s own check when qemu-img is missing)', {}, []),
        ],
      },
    },
  },
}
