import { randomBytes } from 'node:crypto'
import { run, have } from './peers.js'

/**
 * A private test network: one namespace per node, each with a veth whose other end sits on a
 * bridge inside a switch namespace of its own, so nothing touches the machine's own interfaces
 * and no packet leaves the machine. Addresses are 10.77.N.(i+1)/24 with no route beyond; the test's
 * own namespace joins as 10.77.N.254 so that it reaches the nodes without `ip netns exec`.
 * `wrap(node)` is the command prefix that runs a program inside a node
 * (`ip netns exec NS …` execs it, so signals and process groups reach the program itself).
 */
export interface TestNet {
  readonly nodes: Record<string, { ns: string; addr: string }>
  /** the test's own (root) namespace's address on the bridge: the test reaches every node directly */
  readonly rootAddr: string
  wrap(node: string): string[]
  /** takes a node's link down (a partition) or up again */
  cut(node: string): Promise<void>
  heal(node: string): Promise<void>
  /** SIGKILLs every process in a node's namespace: the host dies as a machine would */
  killAll(node: string): Promise<number>
  destroy(): Promise<void>
}

/** Why namespaces cannot be made here, or undefined when they can. */
export function netnsSkip(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root: network namespaces and veth pairs need root'
  if (!have('ip')) return 'iproute2 (ip) not installed'
  return undefined
}

async function ip(args: string[]): Promise<void> {
  const r = await run('ip', args)
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`)
}

export async function createTestNet(t: { teardown(fn: () => unknown): void }, names: string[]): Promise<TestNet> {
  const tag = randomBytes(2).toString('hex')
  const subnet = 1 + (parseInt(tag, 16) % 250)
  const sw = `td${tag}-sw`
  const nodes: TestNet['nodes'] = {}
  const made: string[] = []
  const rootLink = `td${tag}r`
  const destroy = async () => {
    await run('ip', ['link', 'del', rootLink])
    for (const ns of made.splice(0).reverse()) await run('ip', ['netns', 'del', ns])
  }
  t.teardown(destroy)
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
    // the root namespace's own port: a /24 on a local veth, more specific than any default route,
    // so the test's packets to the nodes stay on the bridge
    await ip(['link', 'add', rootLink, 'type', 'veth', 'peer', 'name', `p${tag}r`, 'netns', sw])
    await ip(['addr', 'add', `10.77.${subnet}.254/24`, 'dev', rootLink])
    await ip(['link', 'set', rootLink, 'up'])
    await ip(['-n', sw, 'link', 'set', `p${tag}r`, 'master', 'br0'])
    await ip(['-n', sw, 'link', 'set', `p${tag}r`, 'up'])
  } catch (e) {
    await destroy()
    throw e
  }
  const portOf = (node: string) => {
    const i = names.indexOf(node)
    if (i < 0) throw new Error(`no node '${node}' in this test network`)
    return port(i)
  }
  return {
    nodes,
    rootAddr: `10.77.${subnet}.254`,
    wrap: (node) => ['ip', 'netns', 'exec', nodes[node].ns],
    cut: (node) => ip(['-n', sw, 'link', 'set', portOf(node), 'down']),
    heal: (node) => ip(['-n', sw, 'link', 'set', portOf(node), 'up']),
    killAll: async (node) => {
      const pids = (await run('ip', ['netns', 'pids', nodes[node].ns])).stdout.split('\n').filter(Boolean).map(Number)
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          /* gone */
        }
      }
      return pids.length
    },
    destroy,
  }
}
