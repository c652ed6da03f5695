import t from 'tap'
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { cruise, type IConfiguration, type ICruiseResult } from 'dependency-cruiser'
import { ROOT, tmp } from './helpers/peers.js'

// The layer rules of DESIGN §1 (.dependency-cruiser.cjs): imports point down only, no circles.
const config = createRequire(import.meta.url)(join(ROOT, '.dependency-cruiser.cjs')) as IConfiguration

async function check(baseDir: string): Promise<ICruiseResult> {
  const r = await cruise(['src'], { ...config.options, validate: true, ruleSet: { forbidden: config.forbidden }, baseDir })
  return r.output as ICruiseResult
}

const violations = (r: ICruiseResult) => r.summary.violations.map((v) => `${v.rule.name}: ${v.from} -> ${v.to}${v.cycle ? ` (${v.cycle.map((c) => c.name).join(' -> ')})` : ''}`)

function sources(dir: string, rel = 'src'): string[] {
  return readdirSync(join(dir, rel), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(dir, `${rel}/${e.name}`) : /\.c?ts$/.test(e.name) ? [`${rel}/${e.name}`] : [],
  )
}

t.test('src/ keeps the layer rules: no upward import, no circle', async (t) => {
  const r = await check(ROOT)
  t.same(violations(r), [], 'no violations')
  // the checker saw every source file and resolved every import (or it could pass blind)
  const cruised = new Set(r.modules.map((m) => m.source))
  t.same(sources(ROOT).filter((f) => !cruised.has(f)), [], 'every source file cruised')
  t.ok((r.summary.totalDependenciesCruised ?? 0) > 300, `imports followed (${r.summary.totalDependenciesCruised})`)
})

t.test('each rule fails on a tree that breaks it', async (t) => {
  const dir = tmp(t, 'tandem-layers-')
  const files: Record<string, string> = {
    // bottom layer importing the server; the server importing the client (a type-only import counts)
    'src/disk-formats/low.ts': "import { high } from '../server/high.js'\nexport const low = high\n",
    'src/server/high.ts': "import type { C } from '../client/c.js'\nexport const high: C = 1\n",
    'src/client/c.ts': 'export type C = number\n',
    // a protocol importing the REST layer
    'src/server/nbd/conn.ts': "import { app } from '../http/app.js'\nexport const conn = app\n",
    'src/server/http/app.ts': 'export const app = 1\n',
    // scsi importing the datastore, the datastore importing a protocol
    'src/server/scsi/lu.ts': "import { ds } from '../datastore/ds.js'\nexport const lu = ds\n",
    'src/server/datastore/ds.ts': "import { conn } from '../nbd/conn.js'\nexport const ds = conn\n",
    // a host module importing the CLI
    'src/client/vm/machine.ts': "import { cmd } from '../cli/cmd.js'\nexport const machine = cmd\n",
    'src/client/cli/cmd.ts': 'export const cmd = 1\n',
    // a circle closed by a dynamic import (as vmdk/create.ts and stream-writer.ts had)
    'src/disk-formats/vmdk/a.ts': "import { b } from './b.js'\nexport const a = b\n",
    'src/disk-formats/vmdk/b.ts': "export const b = 1\nexport const later = () => import('./a.js')\n",
    // an import nothing resolves
    'src/disk-formats/gone.ts': "import { x } from './missing.js'\nexport const gone = x\n",
  }
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, f)), { recursive: true })
    writeFileSync(join(dir, f), text)
  }
  const got = violations(await check(dir)).sort()
  t.same(
    got,
    [
      'cli-is-top: src/client/vm/machine.ts -> src/client/cli/cmd.ts',
      'datastore-imports-up: src/server/datastore/ds.ts -> src/server/nbd/conn.ts',
      'disk-formats-imports-up: src/disk-formats/low.ts -> src/server/high.ts',
      'no-circular: src/disk-formats/vmdk/a.ts -> src/disk-formats/vmdk/b.ts (src/disk-formats/vmdk/b.ts -> src/disk-formats/vmdk/a.ts)',
      'resolvable: src/disk-formats/gone.ts -> ./missing.js',
      'scsi-is-transport-free: src/server/scsi/lu.ts -> src/server/datastore/ds.ts',
      'server-imports-client: src/server/high.ts -> src/client/c.ts',
      'server-imports-http: src/server/nbd/conn.ts -> src/server/http/app.ts',
    ],
    'one violation per broken rule, naming the import',
  )
  t.same(new Set(got.map((v) => v.split(':')[0])), new Set(config.forbidden!.map((r) => r.name)), 'every rule is exercised')
})
