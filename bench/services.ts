// `npm run bench:services` (root): what resolving a Service in the agent costs, and how evenly it
// spreads connections. A captured client on node-a; three endpoints of one Service on node-b (so the
// pod IP and the ClusterIP take the same route: tunnel).
//
//   setup    new connections per second (connect, 1 byte echoed, close) to one endpoint's pod IP and
//            to the ClusterIP, one at a time and 8 at a time, alternating, 3 runs each
//   spread   connections to the ClusterIP, 16 at a time, until 10,000: how many each endpoint got
//            (the destination agent's opened-connection counter per workload), max/min
//   pick     the balancer's choice in-process: ns per pick for 3 and 100 endpoints
//
// Writes bench/services-results.json. Nothing is asserted.
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MeshLab } from '../src/demo/lab.ts';
import { assertNetnsPrerequisites } from '../src/netns/topology.ts';
import { EndpointBalancer } from '../src/proxy/balancer.ts';
import type { MeshService } from '../src/workloads/model.ts';
import { parseMetrics, sum } from '../test/support/prometheus.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const LOAD = join(HERE, 'load.ts');
const say = (s: string) => process.stderr.write(`${s}\n`);
const CLUSTER_IP = '10.96.0.10';
const results: Record<string, unknown> = { date: new Date().toISOString(), node: process.version };

// --- pick, in-process ---------------------------------------------------------------------------------
function pickCost(n: number): number {
  const svc: MeshService = {
    name: 'api', namespace: 'shop', clusterIP: CLUSTER_IP, ports: [{ name: 'http', port: 80 }], preferClose: false,
    endpoints: Array.from({ length: n }, (_, i) => ({ ip: `10.0.${i >> 8}.${i & 255}`, node: 'b', ready: true, ports: { http: 8080 } })),
  };
  const b = new EndpointBalancer();
  const leases = [];
  for (let i = 0; i < 10_000; i++) leases.push(b.lease(svc, b.pick(svc, 'http', 'a')!));
  for (const l of leases) l.release();
  const rounds = 200_000;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) b.lease(svc, b.pick(svc, 'http', 'a')!).release();
  return Number(process.hrtime.bigint() - t0) / rounds;
}
results.pickNs = { endpoints3: Math.round(pickCost(3)), endpoints100: Math.round(pickCost(100)) };
say(`pick + lease + release: ${JSON.stringify(results.pickNs)} ns`);

// --- namespaces -----------------------------------------------------------------------------------------
await assertNetnsPrerequisites();
const api = (name: string) => ({ name, namespace: 'shop', serviceAccount: 'api', labels: { app: 'api' } });
const lab = await MeshLab.create({
  nodes: [{ name: 'node-a', pods: [{ name: 'client', namespace: 'shop' }] }, { name: 'node-b', pods: [api('api-1'), api('api-2'), api('api-3')] }],
  services: [{ name: 'api', namespace: 'shop', clusterIP: CLUSTER_IP, ports: [{ name: 'tcp', port: 80, targetPort: 8080 }], selector: { app: 'api' } }],
  agentArgs: ['--access-log', 'off'],
});
try {
  for (const ns of [...lab.meshNodes.map((n) => n.ns), lab.pod('client').ns]) await lab.topo.exec(ns, 'sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1']);
  await lab.startMesh();
  for (const n of ['api-1', 'api-2', 'api-3']) await lab.startServer(n, 8080);
  const connrate = async (host: string, port: number, seconds: number, concurrency: number) => {
    const r = await lab.topo.exec(lab.pod('client').ns, process.execPath, [LOAD, 'connrate', '--host', host, '--port', String(port), '--seconds', String(seconds), '--concurrency', String(concurrency)]);
    if (r.code !== 0) throw new Error(r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { connections: number; errors: number; perSecond: number };
  };
  const setup: Array<{ target: string; concurrency: number; perSecond: number; errors: number }> = [];
  for (let round = 0; round < 3; round++) {
    for (const concurrency of [1, 8]) {
      for (const [target, host, port] of [['pod IP', lab.pod('api-1').ip, 8080], ['ClusterIP', CLUSTER_IP, 80]] as const) {
        const r = await connrate(host, port, 5, concurrency);
        setup.push({ target, concurrency, perSecond: r.perSecond, errors: r.errors });
        say(`setup ${target.padEnd(9)} x${concurrency}: ${r.perSecond} conn/s (${r.errors} errors)`);
      }
    }
  }
  results.setup = setup;

  const opened = async () => {
    const m = parseMetrics(await lab.metrics(lab.node('node-b')));
    return Object.fromEntries(['api-1', 'api-2', 'api-3'].map((w) => [w, sum(m, 'meshlet_tcp_connections_opened_total', { reporter: 'destination', destination_workload: w })]));
  };
  const before = await opened();
  let total = 0;
  let errors = 0;
  while (total < 10_000) {
    const r = await connrate(CLUSTER_IP, 80, 5, 16);
    total += r.connections;
    errors += r.errors;
  }
  const after = await opened();
  const per = Object.fromEntries(Object.keys(after).map((w) => [w, (after[w] ?? 0) - (before[w] ?? 0)]));
  const counts = Object.values(per);
  results.spread = { connections: total, errors, perEndpoint: per, maxOverMin: Math.max(...counts) / Math.min(...counts) };
  say(`spread over ${total} connections: ${JSON.stringify(per)} (max/min ${(Math.max(...counts) / Math.min(...counts)).toFixed(3)}), ${errors} errors`);
} finally {
  await lab.destroy();
}
const out = join(HERE, 'services-results.json');
writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
say(`written to ${out}`);
