import type { Command } from 'commander'
import { resolve } from 'node:path'
import { StorageError } from '../../disk-formats/errors.js'
import { requestJson } from '../api/http.js'
import type { CheckpointSummary } from '../vm/checkpoint.js'

/** `tandem vm checkpoint`: a running VM's checkpoint, through its host or its control socket. */
export function addCheckpointCommand(vm: Command, run: (fn: () => Promise<number | void>) => Promise<void>): void {
  vm.command('checkpoint')
    .description('checkpoint a running VM: a stun of about a millisecond, then its state and memory written to a file while it runs on')
    .argument('[name]', 'the VM, on the host given by --host')
    .option('--host <url>', "the VM's host (tandem host), e.g. http://127.0.0.1:7800")
    .option('--control <path>', 'or the control socket of a tandem vm run --control PATH')
    .requiredOption('--file <path>', 'the checkpoint file to write (replaced whole, never torn)')
    .option('--afterwards <how>', 'keep: the disk layer frozen at the checkpoint is its disk; copy-and-commit: copy it to a file beside the checkpoint, then commit the new delta back into it', 'keep')
    .option('--json', 'print the summary as JSON')
    .addHelpText(
      'after',
      `
The disk: a new copy-on-write delta is made while the VM runs; the VM stops only to arm
copy-on-write on its memory, save its device state and switch onto the delta. Restore with
tandem vm restore FILE (a local disk as it was at the checkpoint: --disk the frozen layer).`,
    )
    .action((name: string | undefined, o) =>
      run(async () => {
        if (o.afterwards !== 'keep' && o.afterwards !== 'copy-and-commit') throw new StorageError('InvalidArgument', `invalid --afterwards '${o.afterwards}' (keep or copy-and-commit)`)
        if (!!o.host === !!o.control) throw new StorageError('InvalidArgument', 'give NAME --host URL, or --control PATH')
        if (o.host && !name) throw new StorageError('InvalidArgument', 'give the VM\'s name with --host')
        const body = { file: resolve(o.file), afterwards: o.afterwards }
        const s = o.host
          ? await requestJson<CheckpointSummary>(o.host, 'POST', `/api/v1/vms/${encodeURIComponent(name!)}/checkpoint`, body, { timeoutMs: 600_000 })
          : await requestJson<CheckpointSummary>(`unix:${resolve(o.control)}`, 'POST', '/api/v1/vm/checkpoint', body, { timeoutMs: 600_000 })
        if (o.json) process.stdout.write(JSON.stringify(s, null, 2) + '\n')
        else {
          process.stdout.write(
            `Checkpoint of ${name ?? 'the VM'} at instruction ${s.instructions}: ${s.file} (${(s.bytes / (1 << 20)).toFixed(1)} MiB)\n` +
              `  stun ${s.stunMs.toFixed(3)} ms; memory written in ${(s.writeMs / 1000).toFixed(2)} s (${s.writeMiBps.toFixed(0)} MiB/s) while the VM ran, ${s.cowPages} pages copied on first write\n` +
              (s.disk ? `  disk: ${s.disk} (${s.afterwards})\n` : ''),
          )
        }
      }),
    )
}
