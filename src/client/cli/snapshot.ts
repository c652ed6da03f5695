import { Command } from 'commander'
import { DEFAULT_SERVER, TandemApi, type Snapshot } from '../api/tandem.js'
import { drawTree, shortTime } from './snapshot-tree-text.js'

type Run = (fn: () => Promise<number | void>) => Promise<void>

const out = (s: string): void => void process.stdout.write(s)
const json = (v: unknown): void => out(JSON.stringify(v, null, 2) + '\n')

function snapshotText(disk: string, s: Snapshot): string {
  return [
    `disk: ${disk}`,
    `snapshot: ${s.name}${s.isCurrent ? ' (current)' : ''}`,
    `parent: ${s.parent ?? '-'}`,
    `created: ${shortTime(s.createdAt)}`,
    `description: ${s.description || '-'}`,
  ].join('\n') + '\n'
}

/** `tandem snapshot`: a disk's snapshot tree on a tandem serve, over its REST API (api/tandem.ts). */
export function snapshotCommand(run: Run): Command {
  const env = process.env
  const cmd = new Command('snapshot').description(
    'a datastore disk\'s snapshots on a tandem serve (vSphere\'s snapshot manager): create, list, tree, show, revert, delete. ' +
      'Mutating commands send the REST token: TANDEM_API_TOKEN, or the server\'s <datastore>/.tandem/api-token when this user can read it',
  )
  const api = (o: { server: string }) => new TandemApi(o.server)
  const common = (c: Command) =>
    c.option('--server <url>', `the tandem serve REST API (env TANDEM_SERVER)`, env.TANDEM_SERVER ?? DEFAULT_SERVER).option('--json', 'JSON output', false)

  common(cmd.command('create').description('take a snapshot of DISK named NAME (the current state is frozen; writes go on in a new delta)').argument('<disk>').argument('<name>'))
    .option('-d, --description <text>', 'what the snapshot is (kept and shown)')
    .action((disk: string, name: string, o) =>
      run(async () => {
        const s = await api(o).createSnapshot(disk, name, o.description === undefined ? {} : { description: o.description })
        if (o.json) json(s)
        else out(`snapshot '${s.name}' of '${disk}' created ${shortTime(s.createdAt)}${s.parent ? ` (parent '${s.parent}')` : ''}\n`)
      }),
    )
  common(cmd.command('list').description('the snapshots of DISK, oldest first').argument('<disk>')).action((disk: string, o) =>
    run(async () => {
      const t = await api(o).snapshots(disk)
      if (o.json) return json(t)
      const rows = [...t.snapshots].sort((a, b) => a.createdAt.localeCompare(b.createdAt))
      if (rows.length === 0) return out(`disk '${disk}' has no snapshots\n`)
      const w = Math.max(4, ...rows.map((s) => s.name.length))
      const pw = Math.max(6, ...rows.map((s) => (s.parent ?? '-').length))
      out(`${'NAME'.padEnd(w)}  ${'PARENT'.padEnd(pw)}  CREATED                  CURRENT  DESCRIPTION\n`)
      for (const s of rows) out(`${s.name.padEnd(w)}  ${(s.parent ?? '-').padEnd(pw)}  ${shortTime(s.createdAt).padEnd(23)}  ${(s.isCurrent ? 'yes' : '').padEnd(7)}  ${s.description.replace(/\r?\n/g, ' ')}\n`)
    }),
  )
  common(cmd.command('tree').description('the snapshot tree of DISK, the current state marked "You are here" under the current snapshot').argument('<disk>')).action((disk: string, o) =>
    run(async () => {
      const t = await api(o).snapshots(disk)
      if (o.json) json(t)
      else out(drawTree(disk, t.current, t.snapshots))
    }),
  )
  common(cmd.command('show').description('one snapshot: parent, creation time, description, whether it is current').argument('<disk>').argument('<name>')).action((disk: string, name: string, o) =>
    run(async () => {
      const s = await api(o).snapshot(disk, name)
      if (o.json) json(s)
      else out(snapshotText(disk, s))
    }),
  )
  common(cmd.command('revert').description('revert DISK to snapshot NAME (the current state is discarded); refused while clients write to DISK unless --force').argument('<disk>').argument('<name>'))
    .option('--force', 'revert even with clients connected (they read the reverted content)', false)
    .action((disk: string, name: string, o) =>
      run(async () => {
        const t = await api(o).revert(disk, name, o.force ? { force: true } : {})
        if (o.json) json(t)
        else out(`'${disk}' reverted to '${name}'\n`)
      }),
    )
  common(cmd.command('delete').description('delete snapshot NAME of DISK (its layer is merged: no content changes)').argument('<disk>').argument('<name>')).action((disk: string, name: string, o) =>
    run(async () => {
      await api(o).deleteSnapshot(disk, name)
      if (o.json) json({ deleted: name, disk })
      else out(`snapshot '${name}' of '${disk}' deleted\n`)
    }),
  )
  for (const c of cmd.commands) c.showHelpAfterError('(run with --help for usage)')
  return cmd
}
