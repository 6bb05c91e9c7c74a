// `npm run bench:overhead` (root): how well the agent's split of its own CPU over the workloads it
// serves (src/telemetry/overhead.ts) matches what each caused. On node-a three pods of three
// namespaces: `chatty` sends keep-alive requests at a fixed rate, `bulky` one bulk transfer,
// `quiet` nothing; all to a server on node-b. Per round, four phases on node-a's agent (one
// worker): idle, chatty alone, bulky alone, both at once. What a workload caused is measured in
// the phase where it sends alone: the agent's CPU then, less the idle rate. In the phase with both,
// each one's apportioned CPU (meshlet_workload_overhead_cpu_seconds_total) is set against that,
// plus its per-pod third of the idle rate. Numbers in bench/README.md, "What the mesh costs each
// workload".
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MeshLab } from '../src/demo/lab.ts';
import { assertNetnsPrerequisites } from '../src/netns/topology.ts';
import { parseMetrics, sum } from '../test/support/prometheus.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const LOAD = join(HERE, 'load.ts');
const ECHO_PORT = 8080;
const HTTP_PORT = 8081;

const { values: opts } = parseArgs({ options: {
  rounds: { type: 'string', default: '3' },
  seconds: { type: 'string', default: '15' },
  rate: { type: 'string', default: '500' },
  'bulk-mb': { type: 'string', default: '512' },
} });
await assertNetnsPrerequisites();
const say = (s: string) => process.stderr.write(`${s}\n`);
const SECONDS = Number(opts.seconds);

const lab = await MeshLab.create({
  workers: 1,
  nodes: [
    { name: 'node-a', pods: [{ name: 'chatty', namespace: 'team-a' }, { name: 'bulky', namespace: 'team-b' }, { name: 'quiet', namespace: 'team-c' }] },
    { name: 'node-b', pods: [{ name: 'server', namespace: 'srv' }] },
  ],
});

async function run(pod: string, args: string[]): Promise<any> {
  const r = await lab.topo.exec(lab.pod(pod).ns, process.execPath, [LOAD, ...args]);
  if (r.code !== 0) throw new Error(`load ${args.join(' ')} in ${pod} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

type Reading = { at: number; cpu: number; shares: Record<string, number> };
const WORKLOADS = ['chatty', 'bulky', 'quiet'];
async function read(): Promise<Reading> {
  const m = parseMetrics(await lab.metrics(lab.node('node-a')));
  const shares = Object.fromEntries(WORKLOADS.map((w) => [w, sum(m, 'meshlet_workload_overhead_cpu_seconds_total', { workload: w })]));
  return { at: Date.now(), cpu: sum(m, 'process_cpu_seconds_total'), shares };
}
/** A phase: the agent's CPU seconds, its duration, and each workload's apportioned CPU seconds. */
async function phase(load: () => Promise<unknown>): Promise<{ cpu: number; seconds: number; shares: Record<string, number> }> {
  const a = await read();
  await load();
  const b = await read();
  return { cpu: b.cpu - a.cpu, seconds: (b.at - a.at) / 1000, shares: Object.fromEntries(WORKLOADS.map((w) => [w, b.shares[w]! - a.shares[w]!])) };
}

const rows: string[] = [];
try {
  await lab.startMesh();
  await lab.startServer('server', ECHO_PORT);
  const http = lab.topo.spawn(lab.pod('server').ns, process.execPath, [LOAD, 'http-server', '--port', String(HTTP_PORT)]);
  await new Promise((r) => http.stdout!.once('data', r));
  const server = lab.pod('server').ip;
  const chatty = () => run('chatty', ['latency', '--url', `http://${server}:${HTTP_PORT}/`, '--rate', opts.rate, '--seconds', String(SECONDS), '--connections', '16']);
  const bulky = () => run('bulky', ['bulk', '--host', server, '--port', String(ECHO_PORT), '--bytes', String(Number(opts['bulk-mb']) * 1048576)]);
  await chatty(); // warm-up: sessions, JIT
  for (let round = 1; round <= Number(opts.rounds); round++) {
    const idle = await phase(() => new Promise((r) => setTimeout(r, SECONDS * 1000)));
    const idleRate = idle.cpu / idle.seconds;
    const alone = { chatty: await phase(chatty), bulky: await phase(bulky) };
    const both = await phase(() => Promise.all([chatty(), bulky()]));
    // What each caused: its phase alone, less the idle rate; what it should be charged with both:
    // that, plus its pod's third of the idle rate over the phase with both.
    const caused = (w: 'chatty' | 'bulky') => alone[w].cpu - idleRate * alone[w].seconds;
    const expected = (w: 'chatty' | 'bulky') => caused(w) + (idleRate * both.seconds) / 3;
    const err = (w: 'chatty' | 'bulky') => ((both.shares[w]! - expected(w)) / expected(w)) * 100;
    const charged = both.shares.chatty! + both.shares.bulky! + both.shares.quiet!;
    const f = (x: number) => x.toFixed(3);
    say(`round ${round}: idle ${f(idleRate)} cores; chatty alone ${f(caused('chatty'))} s, bulky alone ${f(caused('bulky'))} s; ` +
      `both: agent ${f(both.cpu)} s, charged chatty ${f(both.shares.chatty!)} (expected ${f(expected('chatty'))}), bulky ${f(both.shares.bulky!)} (${f(expected('bulky'))}), quiet ${f(both.shares.quiet!)}`);
    rows.push(`| ${round} | ${f(idleRate)} | ${f(caused('chatty'))} / ${f(caused('bulky'))} | ${f(both.cpu)} / ${f(charged)} | ${f(both.shares.chatty!)} / ${f(expected('chatty'))} (${err('chatty').toFixed(0)}%) | ${f(both.shares.bulky!)} / ${f(expected('bulky'))} (${err('bulky').toFixed(0)}%) | ${f(both.shares.quiet!)} / ${f((idleRate * both.seconds) / 3)} |`);
  }
  http.kill();
} finally {
  await lab.destroy();
}
console.log('| round | idle, cores | caused alone (s): chatty / bulky | with both: agent / charged (s) | chatty charged / expected | bulky charged / expected | quiet charged / its idle third |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows) console.log(r);
