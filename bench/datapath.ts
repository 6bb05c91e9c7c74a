// `npm run bench`: what the data path costs, measured on the demo topology (two node namespaces,
// one pod pair per path), side by side:
//   direct     pods outside the mesh, plain TCP across the nodes (the floor)
//   tls-relay  the same pods through our reference relay: one mutual-TLS connection per app connection
//   meshlet    captured pods through both agents: iptables redirect, HTTP/2 CONNECT over mTLS
// Prints a table and writes bench/results.json. Numbers are for the report; nothing is asserted.
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MeshLab, processCpuSeconds as cpuSeconds, processRssMiB as rssMiB } from '../src/demo/lab.ts';
import { assertNetnsPrerequisites } from '../src/netns/topology.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const LOAD = join(HERE, 'load.ts');
const RELAY = join(HERE, 'tls-relay.ts');
const ECHO_PORT = 8080;
const HTTP_PORT = 8081;

const { values: opts } = parseArgs({ options: {
  seconds: { type: 'string', default: '10' },
  rate: { type: 'string', default: '1000' },
  'bulk-mb': { type: 'string', default: '512' },
  'conn-seconds': { type: 'string', default: '5' },
  out: { type: 'string', default: join(HERE, 'results.json') },
} });
const SECONDS = Number(opts.seconds);
const RATE = Number(opts.rate);
const BULK = Number(opts['bulk-mb']) * 1024 * 1024;
const CONN_SECONDS = Number(opts['conn-seconds']);

await assertNetnsPrerequisites();
const say = (s: string) => process.stderr.write(`${s}\n`);


const lab = await MeshLab.create({
  trustDomain: 'bench.local',
  nodes: [
    { name: 'node-a', pods: [{ name: 'client', namespace: 'bench' }, { name: 'plain-client', namespace: 'bench', captured: false }] },
    { name: 'node-b', pods: [{ name: 'server', namespace: 'bench' }, { name: 'plain-server', namespace: 'bench', captured: false }] },
  ],
});

async function spawnReady(ns: string, script: string, args: string[]): Promise<ChildProcess> {
  const child = lab.topo.spawn(ns, process.execPath, [script, ...args]);
  await new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`${script} ${args[0]} did not start`)), 15_000);
    child.stdout?.once('data', () => { clearTimeout(timer); res(); });
    child.once('exit', (code) => { clearTimeout(timer); rej(new Error(`${script} ${args[0]} exited ${code}`)); });
  });
  return child;
}

async function run(pod: string, args: string[]): Promise<any> {
  const r = await lab.topo.exec(lab.pod(pod).ns, process.execPath, [LOAD, ...args]);
  if (r.code !== 0) throw new Error(`load ${args.join(' ')} in ${pod} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

interface PathSpec { name: string; pod: string; host: string; echoPort: number; httpPort: number }

const results: Record<string, any> = {
  when: new Date().toISOString(),
  machine: { node: process.version, cpus: (await import('node:os')).cpus().length },
  settings: { rate: RATE, seconds: SECONDS, requestBytes: 1024, bulkBytes: BULK, connSeconds: CONN_SECONDS },
  paths: {},
};

try {
  await lab.startMesh();
  const nodeA = lab.node('node-a');
  const nodeB = lab.node('node-b');
  for (const pod of ['server', 'plain-server']) {
    await lab.startServer(pod, ECHO_PORT);
    await spawnReady(lab.pod(pod).ns, LOAD, ['http-server', '--port', String(HTTP_PORT)]);
  }
  await spawnReady(nodeB.ns, RELAY, ['exit', '--port', '16443', '--target', lab.pod('plain-server').ip, '--ca-dir', lab.caDir]);
  await spawnReady(nodeA.ns, RELAY, ['entry', '--map', `16080:${ECHO_PORT},16081:${HTTP_PORT}`, '--exit', `${nodeB.ip}:16443`, '--ca-dir', lab.caDir]);

  const paths: PathSpec[] = [
    { name: 'direct', pod: 'plain-client', host: lab.pod('plain-server').ip, echoPort: ECHO_PORT, httpPort: HTTP_PORT },
    { name: 'tls-relay', pod: 'plain-client', host: nodeA.ip, echoPort: 16080, httpPort: 16081 },
    { name: 'meshlet', pod: 'client', host: lab.pod('server').ip, echoPort: ECHO_PORT, httpPort: HTTP_PORT },
  ];
  const agentPids = [...lab.agents.values()].map((a) => a.child.pid!);
  results.agentsRssAtStartMiB = agentPids.map(rssMiB);

  for (const p of paths) {
    say(`${p.name}: latency at ${RATE} req/s for ${SECONDS} s (1 KB request, 1 KB response) ...`);
    const url = `http://${p.host}:${p.httpPort}/`;
    await run(p.pod, ['latency', '--url', url, '--rate', String(RATE), '--seconds', '2', '--connections', '16']); // warm-up
    const cpu0 = agentPids.map(cpuSeconds);
    const latency = await run(p.pod, ['latency', '--url', url, '--rate', String(RATE), '--seconds', String(SECONDS), '--connections', '16']);
    const cpu1 = agentPids.map(cpuSeconds);
    say(`${p.name}: bulk ${BULK / 1048576} MB on one connection ...`);
    const bulk = await run(p.pod, ['bulk', '--host', p.host, '--port', String(p.echoPort), '--bytes', String(BULK)]);
    say(`${p.name}: new connections for ${CONN_SECONDS} s ...`);
    const conn = await run(p.pod, ['connrate', '--host', p.host, '--port', String(p.echoPort), '--seconds', String(CONN_SECONDS), '--concurrency', '32']);
    const entry: Record<string, any> = { latency, bulk, connrate: conn };
    if (p.name === 'meshlet') {
      const cpu = cpu1.reduce((s, c, i) => s + c - cpu0[i]!, 0);
      entry.agents = {
        cpuSecondsPer1000Requests: (cpu / latency.requests) * 1000,
        // CPU seconds per second at RATE req/s, scaled to 1000 req/s (ztunnel's unit: vCPU per 1000 req/s).
        vcpuPer1000Rps: (cpu / SECONDS) * (1000 / RATE),
        rssMiB: agentPids.map(rssMiB),
      };
    }
    results.paths[p.name] = entry;
  }
} finally {
  await lab.destroy();
}

const d = results.paths.direct;
const r = results.paths['tls-relay'];
const m = results.paths.meshlet;
const f = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');
results.summary = {
  addedP50Ms: m.latency.p50 - d.latency.p50,
  addedP99Ms: m.latency.p99 - d.latency.p99,
  bulkVsDirect: m.bulk.mbPerSecond / d.bulk.mbPerSecond,
  bulkVsTlsRelay: m.bulk.mbPerSecond / r.bulk.mbPerSecond,
  connectionsPerSecond: m.connrate.perSecond,
};
writeFileSync(String(opts.out), `${JSON.stringify(results, null, 2)}\n`);

const rows = [
  ['path', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'errors', 'bulk MB/s', 'new conn/s'],
  ...Object.entries(results.paths).map(([name, e]: [string, any]) => [name, f(e.latency.p50, 3), f(e.latency.p90, 3), f(e.latency.p99, 3), f(e.latency.max, 1),
    String(e.latency.errors + e.connrate.errors + (e.bulk.ok ? 0 : 1)), f(e.bulk.mbPerSecond, 0), String(e.connrate.perSecond)]),
];
const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
process.stdout.write(`${rows.map((row) => row.map((c, i) => c.padEnd(widths[i]!)).join('  ')).join('\n')}\n\n`);
process.stdout.write(`meshlet added latency: p50 ${f(results.summary.addedP50Ms, 3)} ms, p99 ${f(results.summary.addedP99Ms, 3)} ms\n`);
process.stdout.write(`meshlet bulk: ${f(results.summary.bulkVsDirect * 100, 0)}% of direct, ${f(results.summary.bulkVsTlsRelay * 100, 0)}% of the TLS relay\n`);
process.stdout.write(`agents (both): ${f(m.agents.cpuSecondsPer1000Requests, 3)} CPU s per 1000 requests = ${f(m.agents.vcpuPer1000Rps, 3)} vCPU per 1000 req/s; RSS ${m.agents.rssMiB.map((x: number) => `${f(x, 0)} MiB`).join(', ')}\n`);
process.stdout.write(`written to ${opts.out}\n`);
