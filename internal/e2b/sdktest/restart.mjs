// Drives a background command across a restart of cove server with the
// official SDK (cmd/cove TestE2BSDK/ServerRestart), in two runs:
//   node restart.mjs start          a sandbox and a background command;
//                                   prints {"sandboxId", "pid"}
//   node restart.mjs after ID PID   after the restart: the command is
//                                   listed, connected to, fed stdin and
//                                   killed by pid; then the sandbox
// Each step prints "step: NAME"; the last line is a JSON summary.
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError } from 'e2b'

const slow = { requestTimeoutMs: 600_000 }
const step = (name) => console.log('step: ' + name)

async function until(what, cond, ms = 120_000) {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const [phase, id, pidArg] = process.argv.slice(2)
if (phase === 'start') {
  step('create, start a background command')
  const sbx = await Sandbox.create('base', { timeoutMs: 1_800_000, ...slow })
  let out = ''
  const echo = await sbx.commands.run('while read l; do echo "line $l"; done', {
    background: true,
    stdin: true,
    timeoutMs: 0,
    onStdout: (d) => {
      out += d
    },
  })
  await sbx.commands.sendStdin(echo.pid, 'before\n')
  await until('the echo before the restart', () => out.includes('line before'))
  console.log(JSON.stringify({ sandboxId: sbx.sandboxId, pid: echo.pid }))
} else if (phase === 'after') {
  const pid = Number(pidArg)
  step('connect to the sandbox')
  const sbx = await Sandbox.connect(id, slow)
  step('list: the command started before the restart')
  const procs = await sbx.commands.list()
  assert.ok(procs.some((p) => p.pid === pid && p.cmd === '/bin/bash'), JSON.stringify(procs))
  step('connect to the command, stdin, kill')
  let out = ''
  const h = await sbx.commands.connect(pid, {
    timeoutMs: 0,
    onStdout: (d) => {
      out += d
    },
  })
  await sbx.commands.sendStdin(pid, 'after\n')
  await until('the echo after the restart', () => out.includes('line after'))
  assert.equal(await sbx.commands.kill(pid), true)
  await assert.rejects(h.wait(), CommandExitError)
  assert.ok(!(await sbx.commands.list()).some((p) => p.pid === pid))
  assert.equal(await sbx.commands.kill(pid), false)
  assert.equal(await sbx.kill(), true)
  console.log(JSON.stringify({ ok: true }))
} else {
  throw new Error('usage: node restart.mjs start | after ID PID')
}
process.exit(0)
