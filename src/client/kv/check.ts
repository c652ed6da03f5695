import type { KvClient } from './client.js'
import { valueSeq, type AckRecord } from './ack-log.js'

export interface CheckProblem {
  key: string
  /** the last acknowledged value */
  acked: string
  /** what the VM holds (null: NOTFOUND) */
  found: string | null
  /** NOTFOUND; stale (an older or foreign value); error (a reply that is neither VALUE nor NOTFOUND) */
  kind: 'missing' | 'stale' | 'error'
}

export interface CheckSummary {
  keys: number
  /** keys holding exactly their last acknowledged value */
  exact: number
  /** keys holding a value sent after their last acknowledged one (its OK was not logged) */
  newer: number
  problems: CheckProblem[]
}

/**
 * GETs every key of `last` (window at a time) and compares: a key must hold its last
 * acknowledged value, or a value the load sent for it later — kvValue(key, s) with s above the
 * acknowledged seq (a load keeps one SET per key outstanding, so a later seq was sent later).
 */
export async function runCheck(client: KvClient, last: Map<string, AckRecord>, window = 8): Promise<CheckSummary> {
  const s: CheckSummary = { keys: last.size, exact: 0, newer: 0, problems: [] }
  const todo = [...last.values()].sort((a, b) => a.seq - b.seq)
  let next = 0
  const worker = async () => {
    while (next < todo.length) {
      const r = todo[next++]
      const reply = (await client.request(`GET ${r.key}`)).text
      if (reply === `VALUE ${r.value}`) s.exact++
      else if (reply === 'NOTFOUND') s.problems.push({ key: r.key, acked: r.value, found: null, kind: 'missing' })
      else if (!reply.startsWith('VALUE ')) s.problems.push({ key: r.key, acked: r.value, found: reply, kind: 'error' })
      else {
        const found = reply.slice(6)
        const seq = valueSeq(r.key, found)
        if (seq !== undefined && seq > r.seq) s.newer++
        else s.problems.push({ key: r.key, acked: r.value, found, kind: 'stale' })
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(window, todo.length)) }, worker))
  s.problems.sort((a, b) => last.get(a.key)!.seq - last.get(b.key)!.seq)
  return s
}
