import { Command, type OptionValues } from 'commander'
import { StorageError } from '../../disk-formats/errors.js'
import { parseMac, parseUdpAddress } from '../net/address.js'
import { loadLazy } from './lazy.js'
import { seconds } from './switch.js'

/** Kept equal to run-kv.ts's KV_EXIT (that module loads only when a kv command runs). */
const NO_REPLY = 3

const count = (v: string, option: string, max: number) => {
  const n = Number(v)
  if (!(Number.isInteger(n) && n >= 1 && n <= max)) throw new StorageError('InvalidArgument', `invalid ${option} '${v}' (1 to ${max})`)
  return n
}

/** The options load and check share, checked. */
function common(o: OptionValues) {
  return {
    switch: parseUdpAddress(o.switch, '--switch'),
    client: {
      vmMac: parseMac(o.vmMac, '--vm-mac'),
      macPrefix: o.mac !== undefined ? parseMac(o.mac, '--mac') : undefined,
      retryMs: count(o.retryMs, '--retry-ms', 60_000),
      timeoutMs: seconds(o.timeout, '--timeout', 0.001),
    },
    log: String(o.log),
    window: count(o.window, '--window', 1024),
    json: o.json === true,
  }
}

const kvRun = () => loadLazy<typeof import('../kv/run-kv.js')>('../kv/run-kv.js')

/** `tandem kv`: a load client and a checker for the kvstore guest, over a `tandem switch` (src/client/kv). */
export function kvCommand(run: (fn: () => Promise<number | void>) => Promise<void>): Command {
  const kv = new Command('kv').description('a load client and a checker for the kvstore guest, on a tandem switch')
  const options = (c: Command) =>
    c
      .requiredOption('--switch <udp:HOST:PORT>', 'the tandem switch the VM is on')
      .requiredOption('--log <file>', 'the acknowledged-SET log (JSON lines {"key","value","seq","t"})')
      .option('--vm-mac <mac>', "the VM's MAC (ff:ff:ff:ff:ff:ff: any VM, by broadcast)", '02:00:00:00:00:01')
      .option('--mac <mac>', "this client's MAC prefix: its first 3 bytes, then a 24-bit tag per request (default 02 and two random bytes)")
      .option('--window <n>', 'requests outstanding at once, each for a different key', '8')
      .option('--retry-ms <ms>', 'send an unanswered request again this often (with the same tag)', '50')
      .option('--timeout <seconds>', `a request unanswered this long fails: exit ${NO_REPLY}`, '5')
      .option('--json', 'print one JSON summary on stdout')
  options(
    kv
      .command('load')
      .description(`SET keys k0..k<N-1> at a rate, each value naming its key and a sequence number (KEY@SEQ); every SET the VM answers OK is appended to the log before its key is used again. SIGINT/SIGTERM: stop, finish outstanding requests, print the summary. Exit 0; 1 if the VM answered a SET with an error; ${NO_REPLY} if it stopped answering`)
      .option('--keys <n>', 'keys k0 .. k<n-1> (the kvstore guest holds 1024)', '100')
      .option('--rate <r>', 'requests started per second', '100')
      .option('--duration <seconds>', 'stop starting requests after this long (without it or --count: until SIGINT/SIGTERM)')
      .option('--count <c>', 'stop after this many requests')
      .option('--seed <n>', 'seed of the key choice', '1'),
  ).action((o) =>
    run(async () => {
      if (o.duration !== undefined && o.count !== undefined) throw new StorageError('InvalidArgument', '--duration and --count cannot be used together')
      const seed = Number(o.seed)
      if (!Number.isSafeInteger(seed)) throw new StorageError('InvalidArgument', `invalid --seed '${o.seed}' (an integer)`)
      const rate = Number(o.rate)
      if (!(rate > 0 && rate <= 1_000_000)) throw new StorageError('InvalidArgument', `invalid --rate '${o.rate}' (requests per second, above 0, at most 1000000)`)
      const c = common(o)
      return (await kvRun()).kvLoad({
        ...c,
        keys: count(o.keys, '--keys', 1_000_000),
        rate,
        count: o.count !== undefined ? count(o.count, '--count', Number.MAX_SAFE_INTEGER) : undefined,
        durationMs: o.duration !== undefined ? seconds(o.duration, '--duration') : undefined,
        seed,
      })
    }),
  )
  options(
    kv
      .command('check')
      .description(`GET every key of the log: each must hold its last acknowledged value, or a value sent for it later (KEY@SEQ with a higher SEQ). Exit 0; 1 listing the first keys that do not; ${NO_REPLY} if the VM does not answer`),
  ).action((o) => run(async () => (await kvRun()).kvCheck(common(o))))
  kv.command('flood')
    .description('send frames at a VM at a fixed rate, from a MAC of its own, for DoS tests: small frames are a flood (tandem host --dos-guard suspends the VM), large ones a bulk transfer (not flagged). Prints a JSON line as the first frame goes out ({"msg":"flood started","at":EPOCH_MS}) and one at the end (frames sent, replies, achieved rate)')
    .requiredOption('--switch <udp:HOST:PORT>', 'the tandem switch the VM is on')
    .option('--vm-mac <mac>', "the VM's MAC", '02:00:00:00:00:01')
    .option('--mac <mac>', 'the MAC frames are sent from', '02:fd:00:00:00:01')
    .option('--pps <n>', 'frames a second', '20000')
    .option('--size <bytes>', `bytes a frame, 14 to 1514 (60: the smallest Ethernet frame)`, '60')
    .option('--seconds <s>', 'how long', '2')
    .option('--ethertype <n>', 'the frames\' EtherType (default 0x88b5, the kvstore guest\'s: it parses each and answers ERR)', '0x88b5')
    .action((o) =>
      run(async () => {
        const size = count(o.size, '--size', 1514)
        if (size < 14) throw new StorageError('InvalidArgument', `invalid --size '${o.size}' (14 to 1514)`)
        const ethertype = Number(o.ethertype)
        if (!(Number.isInteger(ethertype) && ethertype >= 0x600 && ethertype <= 0xffff)) throw new StorageError('InvalidArgument', `invalid --ethertype '${o.ethertype}' (0x0600 to 0xffff)`)
        const { flood } = await loadLazy<typeof import('../kv/flood.js')>('../kv/flood.js')
        const r = await flood(
          { switch: parseUdpAddress(o.switch, '--switch'), to: parseMac(o.vmMac, '--vm-mac'), from: parseMac(o.mac, '--mac'), pps: count(o.pps, '--pps', 1_000_000), size, seconds: seconds(o.seconds, '--seconds', 0.001) / 1000, ethertype },
          (at) => process.stdout.write(JSON.stringify({ msg: 'flood started', at }) + '\n'),
        )
        process.stdout.write(JSON.stringify({ msg: 'flood ended', ...r }) + '\n')
      }),
    )
  return kv
}
