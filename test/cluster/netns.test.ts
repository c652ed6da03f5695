import t from 'tap'
import { spawn } from 'node:child_process'
import { createTestNet, netnsSkip } from '../helpers/netns.js'
import { run } from '../helpers/peers.js'

const ECHO = `require('net').createServer((s) => s.pipe(s)).listen(7000, process.argv[1], () => console.log('up'))`
const CALL = `const s = require('net').connect(7000, process.argv[1], () => s.end('hello')); s.on('data', (d) => { console.log(String(d)); process.exit(0) }); s.on('error', (e) => { console.log(e.code); process.exit(1) }); setTimeout(() => { console.log('TIMEOUT'); process.exit(2) }, Number(process.argv[2]))`

t.test('nodes in their own namespaces reach each other over the test bridge, and a cut link partitions them', { skip: netnsSkip() }, async (t) => {
  const net = await createTestNet(t, ['a', 'b'])
  const [a, b] = [net.nodes.a, net.nodes.b]
  t.not(a.ns, b.ns)
  const echo = spawn(net.wrap('a')[0], [...net.wrap('a').slice(1), process.execPath, '-e', ECHO, a.addr], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => echo.kill('SIGKILL'))
  await new Promise((r) => echo.stdout.once('data', r))
  const call = (ms: number) => run(net.wrap('b')[0], [...net.wrap('b').slice(1), process.execPath, '-e', CALL, a.addr, String(ms)])
  t.equal((await call(5000)).stdout.trim(), 'hello', 'b reaches a across the bridge')
  t.equal((await run(process.execPath, ['-e', CALL, a.addr, '5000'])).stdout.trim(), 'hello', 'the test itself reaches a from its own namespace')
  await net.cut('a')
  t.equal((await call(1500)).stdout.trim(), 'TIMEOUT', 'a cut link partitions a from b')
  await net.heal('a')
  t.equal((await call(5000)).stdout.trim(), 'hello', 'healed, b reaches a again')
  t.equal(await net.killAll('a'), 1, 'the only process in a is killed')
  await net.destroy()
  t.notOk((await run('ip', ['netns', 'list'])).stdout.includes(a.ns), 'the namespaces are removed')
})
