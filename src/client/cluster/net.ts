import { execFile } from 'node:child_process'
import { randomBytes, randomInt } from 'node:crypto'

/**
 * Where a cluster's nodes live. `netns`: one network namespace per node, each with a veth whose
 * other end sits on a bridge inside a switch namespace of its own, so nothing touches the
 * machine's interfaces and no packet leaves it (10.77.N.(i+1)/24; the harness's own namespace
 * joins the bridge as 10.77.N.254 and reaches every node directly; N is a subnet no other cluster network on the machine uses). `loopback`: every node on
 * 127.0.0.1 (ephemeral ports), no isolation: a node partition there cuts only the paths the
 * harness proxies.
 */
export interface ClusterNet {
  readonly mode: 'netns' | 'loopback'
  /** the address a node's programs listen on */
  addr(node: string): string
  /** the harness's own address, which every node reaches (its proxies and switch listen there) */
  readonly harnessAddr: string
  /** the command prefix that runs a program inside a node (`ip netns exec NS` execs it: signals and groups reach the program) */
  wrap(node: string): string[]
  /** takes a node's link down (a partition) or up again */
  cut(node: string): Promise<void>
  heal(node: string): Promise<void>
  /** drops traffic between two nodes only (blackhole routes both ways), or lets it through again */
  cutPair(a: string, b: string): Promise<void>
  healPair(a: string, b: string): Promise<void>
  /** the pids of a node's namespace (netns: every process in it) */
  pids(node: string): Promise<number[]>
  /** the namespaces it made (none on loopback) */
  readonly namespaces: string[]
  /** removes what it made; idempotent */
  destroy(): Promise<void>
}

/** Runs a command: its exit status and output (never throws for a failing status). */
export function runCommand(cmd: string, args: string[], timeoutMs = 30_000): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 << 20 }, (e, stdout, stderr) => {
      const status = e ? (typeof (e as { code?: unknown }).code === 'number' ? (e as { code: number }).code : 127) : 0
      resolve({ status, stdout: String(stdout), stderr: String(stderr) || (e && status === 127 ? e.message : '') })
    })
  })
}

/** Why namespaces cannot be made here, or undefined when they can. */
export async function netnsUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'not root: network namespaces and veth pairs need root'
  if ((await runCommand('ip', ['-V'])).status !== 0) return 'iproute2 (ip) not installed'
  return undefined
}

async function ip(args: string[]): Promise<void> {
  const r = await runCommand('ip', args)
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`)
}

export function loopbackNet(): ClusterNet {
  const none = async () => {
    throw new Error('a partition of one pair needs network namespaces (run as root)')
  }
  return {
    mode: 'loopback',
    addr: () => '127.0.0.1',
    harnessAddr: '127.0.0.1',
    wrap: () => [],
    cut: async () => {},
    heal: async () => {},
    cutPair: none,
    healPair: none,
    pids: async () => [],
    namespaces: [],
    destroy: async () => {},
  }
}

/** A bridge and one namespace per node (names: [a-z0-9-], at most 8 characters shown in interface names). */
/** the 10.77.N.0/24 subnets this process's cluster networks hold */
const held = new Set<number>()

/**
 * A subnet no cluster network uses: neither one of this process's (clusters run side by side in
 * one process) nor one whose address the machine's namespace has (another process's). Two
 * networks on one subnet would each route it to their own bridge, and one would lose its frames.
 */
async function freeSubnet(): Promise<number> {
  const r = await runCommand('ip', ['-o', '-4', 'addr', 'show'])
  const used = new Set([...held, ...[...r.stdout.matchAll(/inet 10\.77\.(\d+)\./g)].map((m) => Number(m[1]))])
  const free = Array.from({ length: 250 }, (_, i) => i + 1).filter((n) => !used.has(n))
  if (free.length === 0) throw new Error('no free subnet 10.77.N.0/24 for a cluster network')
  const n = free[randomInt(free.length)]
  held.add(n)
  return n
}

export async function createNetns(names: string[]): Promise<ClusterNet> {
  const tag = randomBytes(2).toString('hex')
  const subnet = await freeSubnet()
  const sw = `td${tag}-sw`
  const nodes: Record<string, { ns: string; addr: string }> = {}
  const made: string[] = []
  const rootLink = `td${tag}r`
  let destroyed = false
  const destroy = async () => {
    if (destroyed) return
    destroyed = true
    await runCommand('ip', ['link', 'del', rootLink])
    held.delete(subnet)
    for (const ns of made.splice(0).reverse()) await runCommand('ip', ['netns', 'del', ns])
  }
  const port = (i: number) => `p${tag}${i}`
  try {
    await ip(['netns', 'add', sw])
    made.push(sw)
    await ip(['-n', sw, 'link', 'add', 'br0', 'type', 'bridge'])
    await ip(['-n', sw, 'link', 'set', 'br0', 'up'])
    for (const [i, name] of names.entries()) {
      const ns = `td${tag}-${name}`
      await ip(['netns', 'add', ns])
      made.push(ns)
      const addr = `10.77.${subnet}.${i + 1}`
      await ip(['link', 'add', 'eth0', 'netns', ns, 'type', 'veth', 'peer', 'name', port(i), 'netns', sw])
      await ip(['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', 'eth0'])
      await ip(['-n', ns, 'link', 'set', 'lo', 'up'])
      await ip(['-n', ns, 'link', 'set', 'eth0', 'up'])
      await ip(['-n', sw, 'link', 'set', port(i), 'master', 'br0'])
      await ip(['-n', sw, 'link', 'set', port(i), 'up'])
      nodes[name] = { ns, addr }
    }
    // the root namespace's own port: a /24 on a local veth, more specific than any default route
    await ip(['link', 'add', rootLink, 'type', 'veth', 'peer', 'name', `p${tag}r`, 'netns', sw])
    await ip(['addr', 'add', `10.77.${subnet}.254/24`, 'dev', rootLink])
    await ip(['link', 'set', rootLink, 'up'])
    await ip(['-n', sw, 'link', 'set', `p${tag}r`, 'master', 'br0'])
    await ip(['-n', sw, 'link', 'set', `p${tag}r`, 'up'])
  } catch (e) {
    await destroy()
    throw e
  }
  const node = (n: string) => {
    const x = nodes[n]
    if (!x) throw new Error(`no node '${n}' in this network`)
    return x
  }
  const portOf = (n: string) => port(names.indexOf(node(n).ns.slice(`td${tag}-`.length)))
  const route = (op: 'add' | 'del', a: string, b: string) => ip(['-n', node(a).ns, 'route', op, 'blackhole', `${node(b).addr}/32`])
  return {
    mode: 'netns',
    addr: (n) => node(n).addr,
    harnessAddr: `10.77.${subnet}.254`,
    wrap: (n) => ['ip', 'netns', 'exec', node(n).ns],
    cut: (n) => ip(['-n', sw, 'link', 'set', portOf(n), 'down']),
    heal: (n) => ip(['-n', sw, 'link', 'set', portOf(n), 'up']),
    cutPair: async (a, b) => {
      await route('add', a, b)
      await route('add', b, a)
    },
    healPair: async (a, b) => {
      await route('del', a, b)
      await route('del', b, a)
    },
    pids: async (n) => (await runCommand('ip', ['netns', 'pids', node(n).ns])).stdout.split('\n').filter(Boolean).map(Number),
    namespaces: [...made],
    destroy,
  }
}
