// The E2B figures of covebench -only e2b, taken with the official SDK as a
// user's code calls it. Environment: E2B_API_URL, E2B_SANDBOX_URL and
// E2B_API_KEY (as 'cove e2b env' prints them), BENCH_TEMPLATE (the
// template to create from), BENCH_N (sandboxes made, one at a time) and
// BENCH_RUNS (command round trips in each). Prints one JSON object of
// samples in milliseconds.
import { Sandbox } from 'e2b'

const template = process.env.BENCH_TEMPLATE || 'base'
const n = Number(process.env.BENCH_N || 3)
const runs = Number(process.env.BENCH_RUNS || 20)
const out = { createToRun: [], run: [], pause: [], connectToRun: [] }
const since = (t) => performance.now() - t

for (let i = 0; i < n; i++) {
  let t = performance.now()
  const sbx = await Sandbox.create(template, { timeoutMs: 600_000 })
  const first = await sbx.commands.run('echo first')
  out.createToRun.push(since(t))
  if (first.stdout !== 'first\n') throw new Error(`first run printed ${JSON.stringify(first.stdout)}`)
  for (let j = 0; j < runs; j++) {
    t = performance.now()
    const r = await sbx.commands.run('true')
    out.run.push(since(t))
    if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`)
  }
  t = performance.now()
  if (!(await sbx.pause())) throw new Error('pause said the sandbox was paused already')
  out.pause.push(since(t))
  t = performance.now()
  const again = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 600_000 })
  const r = await again.commands.run('echo again')
  out.connectToRun.push(since(t))
  if (r.stdout !== 'again\n') throw new Error(`run after connect printed ${JSON.stringify(r.stdout)}`)
  await again.kill()
}
console.log(JSON.stringify(out))
