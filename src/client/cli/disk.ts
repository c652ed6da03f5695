import { stat } from 'node:fs/promises'
import { isAbsolute, resolve } from 'node:path'
import { Command, Option } from 'commander'
import type { BlockDevice, Extent } from '../../disk-formats/block-device.js'
import { StorageError } from '../../disk-formats/errors.js'
import { imageLocking } from '../../disk-formats/image-lock.js'
import { RawFile } from '../../disk-formats/raw/index.js'
import {
  ADAPTER_TYPES,
  checkExitCode,
  checkImage,

  createVmdk,
  growVmdk,
  SUBFORMATS,
  VmdkImage,
  type AdapterType,
  type Subformat,
} from '../../disk-formats/vmdk/index.js'
import { commit, convert, openVmdk, probeFormat, rebase, type ImageFormat } from '../../disk-formats/chain/index.js'
import { isNetworkDisk, openDisk } from '../transport/open-disk.js'
import { humanSize, parseSize } from './size.js'
import { DEFAULT_SERVER, TandemApi } from '../api/tandem.js'
import { progressBar } from './progress.js'
import { importDisk } from './disk-import.js'
import { isCancelled } from '../../disk-formats/filters/index.js'

/** --type's short names, beside qemu's subformat names. */
const TYPE_ALIASES: Record<string, Subformat> = {
  sparse: 'monolithicSparse',
  flat: 'monolithicFlat',
  'split-sparse': 'twoGbMaxExtentSparse',
  'split-flat': 'twoGbMaxExtentFlat',
  stream: 'streamOptimized',
}

export function parseSubformat(t: string): Subformat {
  const s = TYPE_ALIASES[t] ?? (SUBFORMATS as readonly string[]).find((x) => x.toLowerCase() === t.toLowerCase())
  if (!s) {
    throw new StorageError('InvalidArgument', `unknown subformat '${t}': use ${Object.keys(TYPE_ALIASES).join(', ')} or ${SUBFORMATS.join(', ')}`)
  }
  return s as Subformat
}

function parseFormat(f: string | undefined): ImageFormat | undefined {
  if (f === undefined) return undefined
  if (f !== 'raw' && f !== 'vmdk') throw new StorageError('InvalidArgument', `unknown format '${f}': use raw or vmdk`)
  return f
}

/** -U/--force-share: no image locks for this command (only for commands that write nothing). */
function forceShare(o: { forceShare?: boolean }, writes?: string): void {
  if (!o.forceShare) return
  if (writes) throw new StorageError('InvalidArgument', `--force-share can only be used to read an image, not with ${writes}`)
  imageLocking.forceShare = true
}

function print(json: boolean, value: unknown, text: () => string): void {
  process.stdout.write(json ? JSON.stringify(value, null, 4) + '\n' : text())
}

/** `disk info`: qemu-img's JSON keys, plus the flat keys of DESIGN §7. */
async function infoOf(path: string, format?: ImageFormat): Promise<Record<string, unknown>> {
  if (isNetworkDisk(path)) {
    const dev = await openDisk(path, { readOnly: true, format })
    await dev.close()
    // what qemu-img info says of an NBD export: its size, and no disk size
    return { 'virtual-size': dev.size, filename: path, format: 'raw' }
  }
  const fmt = format ?? (await probeFormat(path))
  if (fmt === 'raw') {
    const raw = await RawFile.open(path, { readOnly: true })
    const st = await stat(path)
    await raw.close()
    return { filename: path, format: 'raw', 'virtual-size': raw.size, 'actual-size': st.blocks * 512, 'dirty-flag': false }
  }
  const img = await VmdkImage.open(path, { readOnly: true })
  try {
    const hint = img.descriptor.parentFileNameHint
    const out: Record<string, unknown> = {
      filename: path,
      format: 'vmdk',
      'virtual-size': img.size,
      'actual-size': await img.actualSize(),
      'create-type': img.createType,
      cid: img.cid,
      'parent-cid': img.parentCid,
    }
    if (img.clusterSize) out['cluster-size'] = img.clusterSize
    if (hint !== undefined) {
      out['backing-filename'] = hint
      out['full-backing-filename'] = img.parentPath
      out['backing-filename-format'] = 'vmdk'
    }
    out['dirty-flag'] = false
    out['format-specific'] = {
      type: 'vmdk',
      data: { cid: img.cid, 'parent-cid': img.parentCid, 'create-type': img.createType, extents: img.extentInfo() },
    }
    out.files = img.files()
    return out
  } finally {
    await img.close()
  }
}

function infoText(i: Record<string, unknown>): string {
  const lines = [
    `image: ${i.filename}`,
    `file format: ${i.format}`,
    `virtual size: ${humanSize(i['virtual-size'] as number)} (${i['virtual-size']} bytes)`,
    `disk size: ${i['actual-size'] === undefined ? 'unavailable' : humanSize(i['actual-size'] as number)}`,
  ]
  if (i['cluster-size']) lines.push(`cluster_size: ${i['cluster-size']}`)
  if (i['backing-filename']) lines.push(`backing file: ${i['backing-filename']}`)
  if (i.format === 'vmdk') {
    const d = (i['format-specific'] as { data: { extents: ReturnType<VmdkImage['extentInfo']> } }).data
    lines.push('Format specific information:')
    lines.push(`    cid: ${i.cid}`, `    parent cid: ${i['parent-cid']}`, `    create type: ${i['create-type']}`, '    extents:')
    // qemu-img's lines and order; `format:` is printed even when empty (a monolithic file's extent)
    for (const [i, e] of d.extents.entries()) {
      lines.push(`        [${i}]:`)
      if (e.compressed) lines.push('            compressed: true')
      lines.push(`            virtual size: ${e['virtual-size']}`, `            filename: ${e.filename}`)
      if (e['cluster-size'] !== undefined) lines.push(`            cluster size: ${e['cluster-size']}`)
      lines.push(`            format: ${e.format}`)
    }
  }
  return lines.join('\n') + '\n'
}

function mapJson(e: Extent) {
  return {
    start: e.offset,
    length: e.length,
    depth: e.depth,
    present: e.present,
    zero: e.zero,
    data: e.data,
    ...(e.hostOffset !== undefined ? { offset: e.hostOffset } : {}),
  }
}

function hex(n: number): string {
  return '0x' + n.toString(16)
}

async function withDevice<T>(dev: BlockDevice, fn: (d: BlockDevice) => Promise<T>): Promise<T> {
  try {
    return await fn(dev)
  } finally {
    await dev.close()
  }
}

export function diskCommand(run: (fn: () => Promise<number | void>) => Promise<void>): Command {
  const disk = new Command('disk').description('create, inspect, check and convert VMDK and raw disk images (qemu-img compatible)')

  disk
    .command('create')
    .description('create a new VMDK image (a copy-on-write delta with --parent)')
    .argument('<path>', 'the image to create')
    .option('--size <size>', 'virtual size, e.g. 64M, 10G (default: the parent\'s size)')
    .addOption(new Option('--type <type>', 'sparse, flat, split-sparse, split-flat, stream, or a qemu subformat name').default('sparse'))
    .option('-b, --parent <parent>', 'parent image: the new disk is a delta on it')
    .option('--zeroed-grain', 'allow zeroed grains (VMDK version 2)', false)
    .addOption(new Option('--adapter-type <type>', 'ddb.adapterType').choices([...ADAPTER_TYPES]).default('ide'))
    .option('--hw-version <version>', 'ddb.virtualHWVersion', '4')
    .option('-f, --force', 'overwrite an existing file', false)
    .action((path: string, o) =>
      run(async () => {
        const sub = parseSubformat(o.type)
        let size = o.size !== undefined ? parseSize(o.size) : undefined
        let parent: { path: string; cid: number } | undefined
        if (o.parent) {
          const ppath = isAbsolute(o.parent) ? o.parent : resolve(o.parent)
          const p = await openVmdk(ppath, { readOnly: true })
          parent = { path: ppath, cid: p.cid }
          size ??= p.size
          await p.close()
        }
        if (size === undefined) throw new StorageError('InvalidArgument', 'the size must be given with --size (or taken from --parent)')
        await createVmdk(path, {
          size,
          subformat: sub,
          parent,
          zeroedGrain: o.zeroedGrain,
          adapterType: o.adapterType as AdapterType,
          hwVersion: o.hwVersion,
          exclusive: !o.force,
        })
        const extra = parent ? ` backing_file=${o.parent} backing_fmt=vmdk` : ''
        process.stdout.write(`Formatting '${path}', fmt=vmdk size=${size}${extra} subformat=${sub}${o.zeroedGrain ? ' zeroed_grain=on' : ''}\n`)
      }),
    )

  disk
    .command('info')
    .description('show an image\'s format, sizes, CIDs and backing file')
    .argument('<path>')
    .option('--json', 'JSON output (qemu-img info --output=json keys)', false)
    .option('-f, --format <fmt>', 'raw or vmdk (default: probe)')
    .option('--backing-chain', 'show every layer of the chain', false)
    .option('-U, --force-share', 'open without taking or testing image locks (read-only inspection of an image in use, as qemu-img -U)', false)
    .action((path: string, o) =>
      run(async () => {
        forceShare(o)
        const fmt = parseFormat(o.format)
        const infos = [await infoOf(path, fmt)]
        if (o.backingChain) {
          while (infos[infos.length - 1]['full-backing-filename']) {
            if (infos.length > 256) throw new StorageError('Corrupt', 'backing chain longer than 256 layers')
            infos.push(await infoOf(infos[infos.length - 1]['full-backing-filename'] as string, 'vmdk'))
          }
        }
        const value = o.backingChain ? infos : infos[0]
        print(o.json, value, () => infos.map(infoText).join('\n'))
      }),
    )

  disk
    .command('map')
    .description('show which ranges are allocated, and in which layer (qemu-img map)')
    .argument('<path>')
    .option('--json', 'JSON output: [{start, length, depth, present, zero, data, offset}]', false)
    .option('-f, --format <fmt>', 'raw or vmdk (default: probe)')
    .option('-U, --force-share', 'open without taking or testing image locks (read-only inspection of an image in use, as qemu-img -U)', false)
    .action((path: string, o) =>
      run(async () => {
        forceShare(o)
        const dev = await openDisk(path, { readOnly: true, format: parseFormat(o.format) })
        await withDevice(dev, async (d) => {
          const ext = await d.blockStatus(0, d.size)
          if (o.json) {
            // qemu-img's exact layout: one extent a line, `{ "start": 0, … "offset": 65536}`
            const line = (e: Extent) => '{ ' + Object.entries(mapJson(e)).map(([k, v]) => `"${k}": ${v}`).join(', ') + '}'
            process.stdout.write('[' + ext.map(line).join(',\n') + ']\n')
          } else {
            const rows = ext.filter((e) => e.data && e.hostOffset !== undefined)
            const pad = (s: string) => s.padEnd(16)
            let out = pad('Offset') + pad('Length') + pad('Mapped to') + 'File\n'
            for (const e of rows) out += pad(hex(e.offset)) + pad(hex(e.length)) + pad(hex(e.hostOffset!)) + e.file + '\n'
            process.stdout.write(out)
          }
        })
      }),
    )

  disk
    .command('check')
    .description('check a VMDK for corruption and leaks; exit 0 clean, 2 corrupt, 3 leaks only')
    .argument('<path>')
    .option('-r, --repair', 'fix leaks and rebuild damaged grain directories/tables from their redundant copies', false)
    .option('--json', 'JSON output (qemu-img check --output=json keys)', false)
    .option('-U, --force-share', 'open without taking or testing image locks (read-only inspection of an image in use, as qemu-img -U)', false)
    .action((path: string, o) =>
      run(async () => {
        forceShare(o, o.repair ? '--repair' : undefined)
        const r = await checkImage(path, { repair: o.repair })
        print(o.json, r, () => {
          const lines = [...r.messages]
          if (r.corruptions === 0 && r.leaks === 0 && r['check-errors'] === 0) lines.push('No errors were found on the image.')
          else {
            if (r.corruptions) lines.push(`\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.`)
            if (r.leaks) lines.push(`\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.`)
            if (r['check-errors']) lines.push(`\n${r['check-errors']} internal errors have occurred during the check.`)
          }
          if (o.repair && (r['leaks-fixed'] || r['corruptions-fixed'])) {
            lines.push(`The following inconsistencies were found and repaired:\n\n    ${r['leaks-fixed']} leaked clusters\n    ${r['corruptions-fixed']} corruptions\n`)
          }
          if (r['total-clusters']) {
            const pct = ((100 * r['allocated-clusters']) / r['total-clusters']).toFixed(2)
            lines.push(`${r['allocated-clusters']}/${r['total-clusters']} = ${pct}% allocated`)
          }
          if (r['image-end-offset']) lines.push(`Image end offset: ${r['image-end-offset']}`)
          return lines.join('\n') + '\n'
        })
        return checkExitCode(r)
      }),
    )

  disk
    .command('commit')
    .description('merge a delta into its parent; the chain stays valid (the delta\'s parentCID follows)')
    .argument('<path>', 'the delta (top layer)')
    .option('-d, --keep', 'keep the delta\'s data instead of emptying it', false)
    .option('--force', 'commit even if the parent has other children (they will refuse to open afterwards)', false)
    .option('-p, --progress', 'show a progress bar even when not on a terminal', false)
    .action((path: string, o) =>
      run(async () => {
        const bar = await progressBar('commit', o.progress)
        try {
          const r = await commit(path, { force: o.force, keepTop: o.keep, onProgress: (d, t) => bar.update(d, t) })
          bar.stop()
          process.stdout.write(`Image committed.\n`)
          if (r.siblings.length) process.stderr.write(`tandem: warning: these children of '${r.parent}' are now stale: ${r.siblings.join(', ')}\n`)
        } finally {
          bar.stop()
        }
      }),
    )

  disk
    .command('rebase')
    .description('change a delta\'s parent without changing its content (qemu-img cannot rebase VMDK)')
    .argument('<path>', 'the delta')
    .option('-b, --parent <parent>', 'the new parent; "" for none')
    .option('-u, --unsafe', 'only rewrite the parent link; copy nothing', false)
    .option('-p, --progress', 'show a progress bar even when not on a terminal', false)
    .action((path: string, o) =>
      run(async () => {
        if (o.parent === undefined) throw new StorageError('InvalidArgument', 'rebase needs -b PARENT (or -b "" for no parent)')
        const np = o.parent === '' ? null : resolve(o.parent)
        const bar = await progressBar('rebase', o.progress)
        try {
          await rebase(path, np, { unsafe: o.unsafe, onProgress: (d, t) => bar.update(d, t) })
        } finally {
          bar.stop()
        }
      }),
    )

  disk
    .command('convert')
    .description('copy an image (its whole chain) into a new raw or VMDK file, skipping zeros; SRC and DST may be nbd:// or iscsi:// URIs (DST then exists and is overwritten, as qemu-img convert -n)')
    .argument('<src>')
    .argument('<dst>')
    .addOption(new Option('-O, --to <format>', 'output format').choices(['raw', 'vmdk']).default('vmdk'))
    .option('-f, --format <fmt>', 'source format: raw or vmdk (default: probe)')
    .option('--type <type>', 'VMDK subformat of the output: sparse, flat, split-sparse, split-flat, stream', 'sparse')
    .option('--zeroed-grain', 'output uses zeroed grains', false)
    .addOption(new Option('--adapter-type <type>', 'ddb.adapterType of the output').choices([...ADAPTER_TYPES]).default('ide'))
    .option('-p, --progress', 'show a progress bar even when not on a terminal', false)
    .option('--sync', 'fdatasync the output before exiting (qemu-img convert does not by default)', false)
    .option('-U, --force-share', 'open the source without taking or testing image locks (as qemu-img -U)', false)
    .action((src: string, dst: string, o) =>
      run(async () => {
        forceShare(o)
        const dev = await openDisk(src, { readOnly: true, format: parseFormat(o.format) })
        let out: BlockDevice | null = null
        const bar = await progressBar('convert', o.progress)
        try {
          // nbd:// and iscsi:// name disks that already exist (qemu-img convert -n): written into, not created
          if (isNetworkDisk(dst)) out = await openDisk(dst, { readOnly: false })
          await convert(dev, out ?? dst, {
            to: o.to,
            subformat: parseSubformat(o.type),
            zeroedGrain: o.zeroedGrain,
            adapterType: o.adapterType as AdapterType,
            sync: o.sync,
            onProgress: (d, t) => bar.update(d, t),
          })
        } finally {
          bar.stop()
          await dev.close()
          await out?.close()
        }
      }),
    )

  disk
    .command('clone')
    .description('on a tandem serve: a new datastore disk NAME from disk SOURCE — a linked clone of --snapshot (a delta on its layer, shared read-only; the snapshot cannot be deleted while the clone exists), or with --full a copy of the snapshot (or of the current state while no client writes it)')
    .argument('<source>', 'the source disk')
    .argument('<name>', 'the new disk')
    .option('-s, --snapshot <snapshot>', 'the source\'s snapshot to clone (needed for a linked clone)')
    .option('--full', 'copy the content (a disk of its own) instead of linking', false)
    .option('--server <url>', 'the tandem serve REST API (env TANDEM_SERVER)', process.env.TANDEM_SERVER ?? DEFAULT_SERVER)
    .option('--json', 'JSON output (the new disk)', false)
    .action((source: string, name: string, o) =>
      run(async () => {
        const d = await new TandemApi(o.server).cloneDisk(source, name, { ...(o.snapshot !== undefined ? { snapshot: o.snapshot } : {}), linked: !o.full })
        process.stdout.write(o.json ? JSON.stringify(d, null, 2) + '\n' : `disk '${d.name}' (${humanSize(d.size)}) ${d.base ? `linked to '${d.base.disk}@${d.base.snapshot}'` : `copied from '${source}'${o.snapshot ? `@${o.snapshot}` : ''}`}\n`)
      }),
    )
  disk
    .command('grow')
    .description('grow a disk to SIZE: a datastore disk NAME on a tandem serve with --server (env TANDEM_SERVER; refused while clients have it exported read-write — NBD cannot tell them the new size — and its snapshots keep their size), else a local monolithicSparse VMDK file (qemu-img resize cannot resize VMDK). Never shrinks')
    .argument('<disk>', 'the datastore disk (with --server), else the image file')
    .argument('<size>', 'the new size, e.g. 20G (at least the current size)')
    .option('--server <url>', 'the tandem serve REST API (env TANDEM_SERVER); without it DISK is a local file')
    .option('--json', 'JSON output (the disk, or {from, to} for a file)', false)
    .action((name: string, sizeText: string, o) =>
      run(async () => {
        const size = parseSize(sizeText)
        const server = o.server ?? process.env.TANDEM_SERVER
        if (server) {
          const d = await new TandemApi(server).growDisk(name, size)
          process.stdout.write(o.json ? JSON.stringify(d, null, 2) + '\n' : `disk '${d.name}' is now ${humanSize(d.size)} (${d.size} bytes)\n`)
          return
        }
        const r = await growVmdk(name, size)
        process.stdout.write(o.json ? JSON.stringify(r) + '\n' : r.from === r.to ? `'${name}' is already ${r.to} bytes\n` : `Image resized: '${name}' ${r.from} → ${r.to} bytes\n`)
      }),
    )

  disk
    .command('import')
    .description('a new datastore disk NAME on a tandem serve from SOURCE: a raw or VMDK file (qcow2: serve it with qemu-nbd and import nbd://), nbd://host:port/export or iscsi://host:port/iqn/lun. Copied from this machine through the disk\'s NBD export, skipping zero and unallocated ranges; SIGINT/SIGTERM cancels (exit 130) and a failed copy stops (exit 1), both deleting the partial disk')
    .argument('<name>', 'the new disk')
    .argument('<source>', 'a file, nbd:// or iscsi:// URI')
    .option('--size <size>', 'the new disk\'s size (default: the source\'s; not smaller)')
    .option('-f, --format <fmt>', 'the source file\'s format: raw or vmdk (default: probe)')
    .option('--server <url>', 'the tandem serve REST API (env TANDEM_SERVER)', process.env.TANDEM_SERVER ?? DEFAULT_SERVER)
    .option('--json', 'JSON lines on stdout: {"event":"start"…}, {"event":"progress","done","total"} at each whole percent, then {"event":"done","disk"}', false)
    .option('-p, --progress', 'show a progress bar even when not on a terminal', false)
    .action((name: string, source: string, o) =>
      run(async () => {
        const size = o.size === undefined ? undefined : parseSize(o.size)
        const ac = new AbortController()
        let signals = 0
        const onSignal = (sig: NodeJS.Signals) => {
          if (++signals > 1) process.exit(130) // a second signal: stop now, the partial disk stays
          process.stderr.write(`tandem: ${sig}: cancelling the import of '${name}' (the partial disk is deleted; again to stop at once)\n`)
          ac.abort(new Error(sig))
        }
        process.on('SIGINT', onSignal)
        process.on('SIGTERM', onSignal)
        // a reader that goes away (`| head -1`) does not stop the import: its lines stop instead (bin.ts)
        const line = (v: unknown) => void process.stdout.write(JSON.stringify(v) + '\n')
        const bar = o.json ? null : await progressBar('import', o.progress)
        let pct = -1
        try {
          const d = await importDisk(new TandemApi(o.server), name, source, {
            size,
            format: parseFormat(o.format),
            signal: ac.signal,
            onStart: (dk, total) => {
              if (o.json) line({ event: 'start', disk: dk.name, size: dk.size, total })
            },
            onProgress: (done, total) => {
              bar?.update(done, total)
              const p = Math.floor((100 * done) / total)
              if (o.json && p !== pct) line({ event: 'progress', done, total })
              pct = p
            },
          })
          bar?.stop()
          if (o.json) line({ event: 'done', disk: d })
          else process.stdout.write(`disk '${d.name}' (${humanSize(d.size)}) imported from ${source}\n`)
        } catch (e) {
          bar?.stop()
          if (ac.signal.aborted && (isCancelled(e) || (e as Error).name === 'AbortError')) {
            process.stderr.write(`tandem: import of '${name}' cancelled; the partial disk was deleted\n`)
            return 130
          }
          throw e
        } finally {
          process.off('SIGINT', onSignal)
          process.off('SIGTERM', onSignal)
        }
      }),
    )
  return disk
}
