// `npm run bench:telemetry` (root): what telemetry costs on the data path. The demo topology with
// one captured client and server on two nodes; both agents run with metrics and access log on, then
// restarted with both off, twice each in turn (on, off, on, off) so drift shows up. Per run: the 1 KB
// request/response latency at a fixed rate (bench/load.ts, 16 keep-alive connections), agent CPU
// over it, and new short connections per second (where per-connection telemetry shows most).
// Writes bench/telemetry-results.json. Nothing is asserted.
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MeshLab } from '../src/demo/lab.ts';
import { processCpuSeconds as cpuSeconds } from '../src/demo/process-stats.ts';
import { assertNetnsPrerequisites } from '../src/netns/topology.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const LOAD = join(HERE, 'load.ts');
const { values: opts } = parseArgs({ options: {
  seconds: { type: 'string', default: '10' },
  rate: { type: 'string', default: '1000' },
  'conn-seconds': { type: 'string', default: '5' },
  out: { type: 'string', default: join(HERE, 'telemetry-results.json') },
} });
const SECONDS = Number(opts.seconds);
const RATE = Number(opts.rate);
const say = (s: string) => process.stderr.write(`${s}\n`);

await assertNetnsPrerequisites();
const lab = await MeshLab.create({
  trustDomain: 'bench.local',
  nodes: [{ name: 'node-a', pods: [{ name: 'client', namespace: 'bench' }] }, { name: 'node-b', pods: [{ name: 'server', namespace: 'bench' }] }],
});

async function load(args: string[]): Promise<any> {
  const r = await lab.topo.exec(lab.pod('client').ns, process.execPath, [LOAD, ...args]);
  if (r.code !== 0) throw new Error(`load ${args.join(' ')} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

const runs: Array<Record<string, unknown>> = [];
try {
  // Four connection-rate runs leave tens of thousands of sockets in TIME_WAIT between the same
  // addresses; without reuse the later runs measure ephemeral-port exhaustion, not telemetry.
  for (const ns of [...lab.meshNodes.map((n) => n.ns), lab.pod('client').ns, lab.pod('server').ns]) {
    await lab.topo.exec(ns, 'sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=10000 65000']);
  }
  await lab.startMesh();
  await lab.startServer('server', 8080);
  await lab.startHttpServer('server', 8081);
  const url = `http://${lab.pod('server').ip}:8081/`;
  for (const telemetry of ['on', 'off', 'on', 'off']) {
    for (const node of lab.meshNodes) {
      await lab.stopAgent(node.name);
      await lab.startAgent(node, ['--metrics', telemetry, '--access-log', telemetry]);
    }
    await Promise.all(lab.meshNodes.map((n) => lab.waitReady(n)));
    const pids = [...lab.agents.values()].map((a) => a.child.pid!);
    await load(['latency', '--url', url, '--rate', String(RATE), '--seconds', '2', '--connections', '16']);
    const cpu0 = pids.map(cpuSeconds);
    const latency = await load(['latency', '--url', url, '--rate', String(RATE), '--seconds', String(SECONDS), '--connections', '16']);
    const cpu = pids.map(cpuSeconds).reduce((s, c, i) => s + c - cpu0[i]!, 0);
    const conn = await load(['connrate', '--host', lab.pod('server').ip, '--port', '8080', '--seconds', opts['conn-seconds']!, '--concurrency', '32']);
    const run = { telemetry, p50: latency.p50, p90: latency.p90, p99: latency.p99, errors: latency.errors + conn.errors,
      vcpuPer1000Rps: (cpu / SECONDS) * (1000 / RATE), newConnPerSecond: conn.perSecond };
    say(`telemetry ${telemetry.padEnd(3)}  p50 ${latency.p50.toFixed(3)} ms  p90 ${latency.p90.toFixed(3)} ms  p99 ${latency.p99.toFixed(3)} ms  ` +
      `agents ${run.vcpuPer1000Rps.toFixed(3)} vCPU/1000 req/s  new conn/s ${conn.perSecond}  errors ${run.errors}`);
    runs.push(run);
  }
} finally {
  await lab.destroy();
}
writeFileSync(opts.out!, `${JSON.stringify({ date: new Date().toISOString(), node: process.version, rate: RATE, seconds: SECONDS, runs }, null, 2)}\n`);
say(`written to ${opts.out}`);
