import { have } from './peers.js'
import { createNetns } from '../../src/client/cluster/net.js'

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

/** The harness's namespaces (src/client/cluster/net.ts), removed at teardown. */
export async function createTestNet(t: { teardown(fn: () => unknown): void }, names: string[]): Promise<TestNet> {
  const net = await createNetns(names)
  t.teardown(() => net.destroy())
  const nodes: TestNet['nodes'] = Object.fromEntries(names.map((n) => [n, { ns: net.wrap(n)[3], addr: net.addr(n) }]))
  return {
    nodes,
    rootAddr: net.harnessAddr,
    wrap: (node) => net.wrap(node),
    cut: (node) => net.cut(node),
    heal: (node) => net.heal(node),
    killAll: async (node) => {
      const pids = await net.pids(node)
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          /* gone */
        }
      }
      return pids.length
    },
    destroy: () => net.destroy(),
  }
}
