// Drives cove's E2B-compatible API with the official SDK, as a user's
// program would: E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY come from
// the environment ('cove e2b env'). Each step prints "step: NAME"; a
// failed assertion exits non-zero with the step it was in. The last line
// is a JSON summary for the Go test (cmd/cove TestE2BSDK).
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError, SandboxNotFoundError, getSignature } from 'e2b'

// Boots and wakes take seconds to tens of seconds under TCG.
const slow = { requestTimeoutMs: 600_000 }
const summary = {}

function step(name) {
  console.log('step: ' + name)
}

// until waits for cond() to hold, polling; it fails after ms.
async function until(what, cond, ms = 120_000) {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what)
    await new Promise((r) => setTimeout(r, 50))
  }
}

// ms since t0, for the summary's timings (informative, not asserted).
const since = (t0) => Math.round(performance.now() - t0)
summary.ms = {}

step('create')
let t0 = performance.now()
const sbx = await Sandbox.create('base', {
  timeoutMs: 1_800_000,
  metadata: { suite: 'sdk', 'a b': 'c&d' },
  envs: { GREETING: 'hello' },
  ...slow,
})
summary.sandboxId = sbx.sandboxId
summary.ms.create = since(t0)

step('run: stdout, stderr, env, cwd')
t0 = performance.now()
let r = await sbx.commands.run('echo out; echo err >&2; echo $GREETING $EXTRA; pwd', {
  envs: { EXTRA: 'there' },
  cwd: '/tmp',
})
summary.ms.firstRun = since(t0)
assert.equal(r.exitCode, 0)
assert.equal(r.stdout, 'out\nhello there\n/tmp\n')
assert.equal(r.stderr, 'err\n')

step('run: exit code')
await assert.rejects(sbx.commands.run('echo failing >&2; exit 3'), (e) => {
  assert.ok(e instanceof CommandExitError, `want CommandExitError, got ${e}`)
  assert.equal(e.exitCode, 3)
  assert.equal(e.stderr, 'failing\n')
  return true
})

step('run: stdin')
const cat = await sbx.commands.run('cat', { background: true, stdin: true })
await sbx.commands.sendStdin(cat.pid, 'piped\n')
await sbx.commands.closeStdin(cat.pid)
r = await cat.wait()
assert.equal(r.stdout, 'piped\n')

step('background command, list, kill')
const sleeper = await sbx.commands.run('sleep 600', { background: true, timeoutMs: 0 })
assert.ok(sleeper.pid > 0)
let procs = await sbx.commands.list()
assert.ok(procs.some((p) => p.pid === sleeper.pid && p.cmd === '/bin/bash'), JSON.stringify(procs))
assert.equal(await sbx.commands.kill(sleeper.pid), true)
await assert.rejects(sleeper.wait(), CommandExitError)
assert.equal(await sbx.commands.kill(sleeper.pid), false)
r = await sbx.commands.run(`kill -0 ${sleeper.pid} 2>/dev/null && echo alive || echo gone`)
assert.equal(r.stdout, 'gone\n')

step('files: text and binary')
await sbx.files.write('/tmp/e2b/hello.txt', 'hello file')
assert.equal(await sbx.files.read('/tmp/e2b/hello.txt'), 'hello file')
const bin = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 7 + (i >> 8)) & 0xff)
await sbx.files.write('/tmp/e2b/bin.dat', bin.buffer)
assert.deepEqual(Buffer.from(await sbx.files.read('/tmp/e2b/bin.dat', { format: 'bytes' })), Buffer.from(bin))
r = await sbx.commands.run('cat /tmp/e2b/hello.txt; wc -c < /tmp/e2b/bin.dat')
assert.equal(r.stdout, 'hello file70000\n')

step('files: multi-file write, relative paths')
const written = await sbx.files.write([
  { path: '/tmp/e2b/m1', data: 'one' },
  { path: '/tmp/e2b/sub/m2', data: 'two' },
])
assert.deepEqual(written.map((w) => w.path).sort(), ['/tmp/e2b/m1', '/tmp/e2b/sub/m2'])
assert.equal(await sbx.files.read('/tmp/e2b/sub/m2'), 'two')
await sbx.files.write('rel.txt', 'in home')
assert.equal((await sbx.commands.run('cat /home/user/rel.txt')).stdout, 'in home')

step('files: exists, makeDir, list, getInfo, rename, remove')
assert.equal(await sbx.files.exists('/tmp/e2b/m1'), true)
assert.equal(await sbx.files.exists('/tmp/e2b/nope'), false)
assert.equal(await sbx.files.makeDir('/tmp/e2b/dir'), true)
assert.equal(await sbx.files.makeDir('/tmp/e2b/dir'), false)
const names = (await sbx.files.list('/tmp/e2b')).map((e) => `${e.name}:${e.type}`).sort()
assert.deepEqual(names, ['bin.dat:file', 'dir:dir', 'hello.txt:file', 'm1:file', 'sub:dir'])
const info = await sbx.files.getInfo('/tmp/e2b/hello.txt')
assert.equal(info.size, 10)
assert.equal(info.path, '/tmp/e2b/hello.txt')
const moved = await sbx.files.rename('/tmp/e2b/m1', '/tmp/e2b/renamed')
assert.equal(moved.path, '/tmp/e2b/renamed')
assert.equal(await sbx.files.exists('/tmp/e2b/m1'), false)
assert.equal(await sbx.files.read('/tmp/e2b/renamed'), 'one')
await sbx.files.remove('/tmp/e2b/renamed')
assert.equal(await sbx.files.exists('/tmp/e2b/renamed'), false)
await assert.rejects(sbx.files.read('/tmp/e2b/renamed'))
await assert.rejects(sbx.files.remove('/tmp/e2b/renamed'))

step('users: user by default, with sudo; root when asked; an unknown one')
// As on E2B: the template's user, uid 1000, home /home/user, sudo
// without a password; root only where the call names it.
r = await sbx.commands.run('whoami; id -u; pwd; echo $HOME $USER')
assert.equal(r.stdout, 'user\n1000\n/home/user\n/home/user user\n')
r = await sbx.commands.run('sudo -n true && sudo -n whoami')
assert.equal(r.stdout, 'root\n')
r = await sbx.commands.run('whoami; pwd; echo $HOME', { user: 'root' })
assert.equal(r.stdout, 'root\n/root\n/root\n')
r = await sbx.commands.run('id -un; pwd', { user: 'user' }) // named, the same user
assert.equal(r.stdout, 'user\n/home/user\n')
await sbx.files.write('owned.txt', 'mine') // relative: in the user's home
await sbx.files.write('/tmp/u/deep/owned.txt', 'deep')
r = await sbx.commands.run('stat -c %U:%G /home/user/owned.txt /tmp/u /tmp/u/deep/owned.txt /tmp/e2b/hello.txt')
assert.equal(r.stdout, 'user:user\nuser:user\nuser:user\nuser:user\n')
await sbx.files.write('/tmp/r/by-root.txt', 'root made', { user: 'root' })
await sbx.files.write('secret.txt', 'root only', { user: 'root' }) // relative: in root's home
assert.equal((await sbx.commands.run('stat -c %U:%G /tmp/r /tmp/r/by-root.txt /root/secret.txt', { user: 'root' })).stdout, 'root:root\nroot:root\nroot:root\n')
assert.equal(await sbx.files.read('owned.txt'), 'mine')
assert.equal(await sbx.files.makeDir('made'), true)
assert.equal((await sbx.commands.run('stat -c %U /home/user/made')).stdout, 'user\n')
await sbx.files.rename('owned.txt', 'moved.txt')
assert.equal(await sbx.files.read('/home/user/moved.txt'), 'mine')
const owned = await sbx.files.getInfo('/home/user/moved.txt')
assert.equal(`${owned.owner}:${owned.group}`, 'user:user')
const rootOwned = (await sbx.files.list('/tmp/r')).find((e) => e.name === 'by-root.txt')
assert.equal(`${rootOwned.owner}:${rootOwned.group}`, 'root:root')
// The guest's permissions hold: root's home and files are not the user's.
await assert.rejects(sbx.files.read('/root/secret.txt'))
assert.equal(await sbx.files.read('/root/secret.txt', { user: 'root' }), 'root only')
await assert.rejects(sbx.files.write('/root/not-yours.txt', 'x'))
await assert.rejects(sbx.files.remove('/tmp/r/by-root.txt'))
assert.equal(await sbx.files.exists('/root/not-yours.txt'), false)
assert.equal(await sbx.files.exists('/tmp/r/by-root.txt'), true)
await assert.rejects(sbx.commands.run('touch /root/x'), CommandExitError)
await assert.rejects(sbx.commands.run('true', { user: 'nosuchuser' }), (e) => e.name === 'AuthenticationError' || String(e))
await assert.rejects(sbx.files.read('/etc/hostname', { user: 'nosuchuser' }), (e) => e.name === 'AuthenticationError' || String(e))

step('files: watchDir, recursive and not, stop')
await sbx.files.makeDir('/tmp/w/sub')
const flat = []
const deep = []
let flatExit
const hFlat = await sbx.files.watchDir('/tmp/w', (e) => flat.push(`${e.type} ${e.name}`), {
  onExit: (err) => {
    flatExit = err ? String(err) : 'clean'
  },
})
const hDeep = await sbx.files.watchDir('/tmp/w', (e) => deep.push(`${e.type} ${e.name}`), { recursive: true, timeoutMs: 0 })
await sbx.files.write('/tmp/w/by-sdk.txt', 'x')
await sbx.commands.run('echo y > /tmp/w/sub/by-cmd.txt; echo z > /tmp/w/by-cmd.txt; chmod 600 /tmp/w/by-cmd.txt')
await until('the flat watch sees both writes', () =>
  ['create by-sdk.txt', 'write by-sdk.txt', 'create by-cmd.txt', 'write by-cmd.txt', 'chmod by-cmd.txt'].every((e) => flat.includes(e)),
)
await until('the recursive watch sees the write in sub/', () =>
  ['create sub/by-cmd.txt', 'write sub/by-cmd.txt', 'write by-sdk.txt'].every((e) => deep.includes(e)),
)
assert.ok(!flat.some((e) => e.includes('sub/')), JSON.stringify(flat))
assert.ok(!deep.some((e) => e.includes('.cove-write')), JSON.stringify(deep))
await hFlat.stop()
await until('the stopped watch exits', () => flatExit !== undefined)
const flatSeen = flat.length
await sbx.files.rename('/tmp/w/by-sdk.txt', '/tmp/w/renamed.txt')
await sbx.files.remove('/tmp/w/renamed.txt')
await until('rename and remove', () =>
  ['rename by-sdk.txt', 'create renamed.txt', 'remove renamed.txt'].every((e) => deep.includes(e)),
)
assert.equal(flat.length, flatSeen, 'events after stop: ' + JSON.stringify(flat.slice(flatSeen)))
await hDeep.stop()
// includeEntry (envd 0.6.3): each event carries the entry as it is then.
const withEntry = []
const hEntry = await sbx.files.watchDir('/tmp/w', (e) => withEntry.push(e), { includeEntry: true, timeoutMs: 0 })
await sbx.files.write('/tmp/w/entry.txt', 'four')
await until('an event with its entry', () => withEntry.some((e) => e.type === 'write' && e.entry?.size === 4))
const ev = withEntry.find((e) => e.type === 'write' && e.entry?.size === 4)
assert.equal(ev.entry.name, 'entry.txt')
assert.equal(ev.entry.path, '/tmp/w/entry.txt')
assert.equal(ev.entry.type, 'file')
await hEntry.stop()
// File metadata (envd 0.6.2) is refused, not dropped.
await assert.rejects(sbx.files.write('/tmp/w/meta.txt', 'x', { metadata: { k: 'v' } }), (e) => e.name === 'InvalidArgumentError' || String(e))
assert.equal(await sbx.files.exists('/tmp/w/meta.txt'), false)
await assert.rejects(sbx.files.watchDir('/tmp/w/nope', () => {}), (e) => e.name === 'FileNotFoundError' || String(e))
await assert.rejects(sbx.files.watchDir('/tmp/w/by-cmd.txt', () => {}), (e) => e.name === 'InvalidArgumentError' || String(e))

step('signed file URLs: uploadUrl, downloadUrl, expiry, refusals')
const upUrl = await sbx.uploadUrl('/tmp/e2b/signed.txt')
assert.ok(new URL(upUrl).searchParams.get('signature').startsWith('v1_'), upUrl)
const form = new FormData()
form.append('file', new Blob(['signed upload']), 'signed.txt')
let res = await fetch(upUrl, { method: 'POST', body: form })
assert.equal(res.status, 200, await res.text())
const downUrl = await sbx.downloadUrl('/tmp/e2b/signed.txt', { useSignatureExpiration: 600 })
assert.ok(new URL(downUrl).searchParams.get('signature_expiration'), downUrl)
res = await fetch(downUrl)
assert.equal(await res.text(), 'signed upload')
// A read URL does not write; another path is not signed; a past
// expiration is refused.
res = await fetch(downUrl, { method: 'POST', body: form })
assert.equal(res.status, 401, await res.text())
const otherPath = new URL(downUrl)
otherPath.searchParams.set('path', '/etc/hostname')
res = await fetch(otherPath)
assert.equal(res.status, 401, await res.text())
const expired = await getSignature({
  path: '/tmp/e2b/signed.txt',
  operation: 'read',
  expirationInSeconds: -60,
  envdAccessToken: sbx.envdAccessToken,
})
const expiredUrl = new URL(downUrl)
expiredUrl.searchParams.set('signature', expired.signature)
expiredUrl.searchParams.set('signature_expiration', String(expired.expiration))
res = await fetch(expiredUrl)
assert.equal(res.status, 401, await res.text())
assert.equal(await sbx.files.read('/tmp/e2b/signed.txt'), 'signed upload')

step('getInfo, list with filters')
const sinfo = await sbx.getInfo()
assert.equal(sinfo.sandboxId, sbx.sandboxId)
assert.equal(sinfo.templateId, 'base')
assert.equal(sinfo.state, 'running')
assert.deepEqual(sinfo.metadata, { suite: 'sdk', 'a b': 'c&d' })
let page = await Sandbox.list({ query: { metadata: { 'a b': 'c&d' } } }).nextItems()
assert.deepEqual(page.map((s) => s.sandboxId), [sbx.sandboxId])
page = await Sandbox.list({ query: { metadata: { suite: 'other' } } }).nextItems()
assert.deepEqual(page, [])
page = await Sandbox.list({ query: { state: ['paused'] } }).nextItems()
assert.ok(!page.some((s) => s.sandboxId === sbx.sandboxId))

step('getMetrics')
let samples = await sbx.getMetrics()
assert.equal(samples.length, 1, JSON.stringify(samples))
let sample = samples[0]
assert.ok(sample.timestamp instanceof Date && !isNaN(sample.timestamp), JSON.stringify(sample))
assert.ok(sample.cpuCount >= 1 && sample.cpuUsedPct >= 0 && sample.cpuUsedPct <= 100, JSON.stringify(sample))
assert.ok(sample.memTotal > 100 * 2 ** 20 && sample.memUsed > 0 && sample.memUsed < sample.memTotal, JSON.stringify(sample))
assert.ok(sample.diskTotal > 0 && sample.diskUsed > 0 && sample.diskUsed < sample.diskTotal, JSON.stringify(sample))
samples = await sbx.getMetrics({ start: new Date(sample.timestamp.getTime() - 60_000) })
assert.equal(samples.length, 2, JSON.stringify(samples))
samples = await sbx.getMetrics({ start: new Date(Date.now() + 3_600_000), end: new Date(Date.now() + 7_200_000) })
assert.equal(samples.length, 0, JSON.stringify(samples))
summary.metrics = sample

step('setTimeout')
await sbx.setTimeout(3_600_000)
const later = await sbx.getInfo()
assert.ok(later.endAt.getTime() > sinfo.endAt.getTime(), `${later.endAt} after ${sinfo.endAt}`)

step('pty: input, resize, kill')
let ptyOut = ''
const term = await sbx.pty.create({
  cols: 80,
  rows: 24,
  timeoutMs: 0,
  onData: (d) => {
    ptyOut += new TextDecoder().decode(d)
  },
})
await sbx.pty.sendInput(term.pid, new TextEncoder().encode('echo pty-$((6*7))\n'))
await until('the PTY echo', () => ptyOut.includes('pty-42'))
await sbx.pty.resize(term.pid, { cols: 100, rows: 30 })
await sbx.pty.sendInput(term.pid, new TextEncoder().encode('stty size\n'))
await until('the new size', () => ptyOut.includes('30 100'))
assert.equal(await sbx.pty.kill(term.pid), true)

step('pause with a background process, then connect')
let out = ''
const counter = await sbx.commands.run('n=0; while read l; do n=$((n+1)); echo "count $n"; done', {
  background: true,
  stdin: true,
  timeoutMs: 0,
  onStdout: (d) => {
    out += d
  },
})
await sbx.commands.sendStdin(counter.pid, 'a\nb\n')
await until('count 2', () => out.includes('count 2'))
await sbx.files.write('/tmp/e2b/before-pause', 'kept')
// A watch open across the pause ends cleanly with it.
let parkWatchExit
await sbx.files.watchDir('/tmp/w', () => {}, {
  timeoutMs: 0,
  onExit: (err) => {
    parkWatchExit = err ? String(err) : 'clean'
  },
})
t0 = performance.now()
assert.equal(await sbx.pause(), true)
summary.ms.pause = since(t0)
await until('the watch ends with the pause', () => parkWatchExit !== undefined)
assert.equal(parkWatchExit, 'clean')
assert.equal(await sbx.isRunning(), false)
page = await Sandbox.list({ query: { state: ['paused'] } }).nextItems()
assert.ok(page.some((s) => s.sandboxId === sbx.sandboxId))
t0 = performance.now()
const again = await Sandbox.connect(sbx.sandboxId, slow)
summary.ms.connect = since(t0)
t0 = performance.now()
assert.equal((await again.commands.run('echo back')).stdout, 'back\n')
summary.ms.runAfterConnect = since(t0)
assert.equal(await again.isRunning(), true)
assert.equal(await sbx.isRunning(), true) // the same access token
await again.commands.sendStdin(counter.pid, 'c\n')
await until('count 3 after the resume', () => out.includes('count 3'))
assert.equal(out, 'count 1\ncount 2\ncount 3\n')
assert.equal(await again.files.read('/tmp/e2b/before-pause'), 'kept')
procs = await again.commands.list()
assert.ok(procs.some((p) => p.pid === counter.pid))
assert.equal(await again.commands.kill(counter.pid), true)

step('createSnapshot, listSnapshots, deleteSnapshot')
await again.files.write('/tmp/e2b/snap.txt', 'in the snapshot')
const bg = await again.commands.run('sleep 900', { background: true, timeoutMs: 0 })
t0 = performance.now()
const snap = await again.createSnapshot(slow)
summary.ms.createSnapshot = since(t0)
assert.ok(snap.snapshotId.startsWith(sbx.sandboxId + ':'), snap.snapshotId)
assert.deepEqual(snap.names, [snap.snapshotId])
assert.equal(await again.isRunning(), true) // it runs on
const named = await again.createSnapshot({ name: 'named', ...slow })
assert.equal(named.snapshotId, sbx.sandboxId + ':named')
await assert.rejects(again.createSnapshot({ name: 'named' })) // a name is unique in its sandbox: 409
await assert.rejects(again.createSnapshot({ name: 'Not A Name' })) // 400
let snaps = await again.listSnapshots().nextItems()
assert.deepEqual(snaps.map((s) => s.snapshotId).sort(), [snap.snapshotId, named.snapshotId].sort())
snaps = await Sandbox.listSnapshots({ name: 'named' }).nextItems()
assert.deepEqual(snaps.map((s) => s.snapshotId), [named.snapshotId])
const pager = Sandbox.listSnapshots({ sandboxId: sbx.sandboxId, limit: 1 })
const page1 = await pager.nextItems()
assert.equal(pager.hasNext, true)
const page2 = await pager.nextItems()
assert.equal(pager.hasNext, false)
assert.deepEqual([...page1, ...page2].map((s) => s.snapshotId), [named.snapshotId, snap.snapshotId]) // newest first
assert.equal(await Sandbox.deleteSnapshot(named.snapshotId), true)
assert.equal(await Sandbox.deleteSnapshot(named.snapshotId), false)
assert.deepEqual((await again.listSnapshots().nextItems()).map((s) => s.snapshotId), [snap.snapshotId])

step('create from a snapshot')
await again.files.write('/tmp/e2b/snap.txt', 'changed after')
t0 = performance.now()
const fromSnap = await Sandbox.create(snap.snapshotId, { timeoutMs: 600_000, metadata: { from: 'snapshot' }, ...slow })
summary.ms.createFromSnapshot = since(t0)
assert.notEqual(fromSnap.sandboxId, sbx.sandboxId)
assert.equal(await fromSnap.files.read('/tmp/e2b/snap.txt'), 'in the snapshot')
assert.equal((await fromSnap.commands.run(`kill -0 ${bg.pid} && echo alive`)).stdout, 'alive\n')
const fsInfo = await fromSnap.getInfo()
assert.equal(fsInfo.templateId, snap.snapshotId)
assert.deepEqual(fsInfo.metadata, { from: 'snapshot' })
await assert.rejects(Sandbox.create(named.snapshotId)) // deleted: 404
assert.equal(await fromSnap.kill(), true)

step('fork')
t0 = performance.now()
const [one] = await again.fork({ timeoutMs: 600_000, ...slow })
summary.ms.fork = since(t0)
assert.ok(one instanceof Sandbox, String(one))
t0 = performance.now()
const forks = await Sandbox.fork(sbx.sandboxId, { count: 2, timeoutMs: 600_000, ...slow })
summary.ms.fork2 = since(t0)
assert.equal(forks.length, 2)
for (const f of [one, ...forks]) {
  assert.ok(f instanceof Sandbox, String(f))
  assert.ok(f.sandboxId !== sbx.sandboxId)
  assert.equal(await f.files.read('/tmp/e2b/snap.txt'), 'changed after')
  assert.equal((await f.commands.run(`kill -0 ${bg.pid} && echo alive`)).stdout, 'alive\n')
  assert.deepEqual((await f.getInfo()).metadata, { suite: 'sdk', 'a b': 'c&d' })
}
assert.equal(new Set([one, ...forks].map((f) => f.sandboxId)).size, 3)
await one.files.write('/tmp/e2b/fork-only', 'mine')
assert.equal(await one.files.read('/tmp/e2b/fork-only'), 'mine')
assert.equal(await again.files.exists('/tmp/e2b/fork-only'), false)
assert.equal(await forks[0].files.exists('/tmp/e2b/fork-only'), false)
// A fork's checkpoint is not left as a snapshot.
assert.deepEqual((await again.listSnapshots().nextItems()).map((s) => s.snapshotId), [snap.snapshotId])
await assert.rejects(Sandbox.fork('s-nosuchsandbox'), SandboxNotFoundError)
for (const f of [one, ...forks]) assert.equal(await f.kill(), true)
assert.equal(await again.commands.kill(bg.pid), true)

step('kill, and after kill')
assert.equal(await sbx.kill(), true)
assert.equal(await Sandbox.kill(sbx.sandboxId), false)
assert.equal(await sbx.isRunning(), false)
await assert.rejects(sbx.commands.run('true'))
await assert.rejects(Sandbox.getInfo(sbx.sandboxId))
await assert.rejects(Sandbox.connect(sbx.sandboxId))
page = await Sandbox.list().nextItems()
assert.ok(!page.some((s) => s.sandboxId === sbx.sandboxId))
// A snapshot outlives its sandbox: kept (as a cove template), it still
// makes sandboxes, until it is deleted.
let kept = await Sandbox.listSnapshots({ sandboxId: sbx.sandboxId }).nextItems()
assert.deepEqual(kept.map((s) => s.snapshotId), [snap.snapshotId])
t0 = performance.now()
const fromKept = await Sandbox.create(snap.snapshotId, { timeoutMs: 600_000, ...slow })
summary.ms.createFromKeptSnapshot = since(t0)
assert.equal(await fromKept.files.read('/tmp/e2b/snap.txt'), 'in the snapshot')
assert.equal((await fromKept.commands.run(`kill -0 ${bg.pid} && echo alive`)).stdout, 'alive\n')
assert.equal((await fromKept.getInfo()).templateId, snap.snapshotId)
assert.equal(await fromKept.kill(), true)
assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false)
assert.deepEqual(await Sandbox.listSnapshots({ sandboxId: sbx.sandboxId }).nextItems(), [])

summary.ok = true
console.log(JSON.stringify(summary))
// Pooled keep-alive connections would hold the process a while.
process.exit(0)
