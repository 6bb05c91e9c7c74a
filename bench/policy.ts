// `npm run bench:policy`: what policy evaluation and telemetry cost per connection, in-process (no
// namespaces, no root): the same MeshPolicyEngine and ConnectionTracker the agents run.
//
//   policy     1,000 MeshPolicies in the mesh (10 per namespace in 99 namespaces, 10 in the root
//              namespace), 10,000 workloads; authorize() per connection with warm per-workload
//              caches, and the first decision for each workload (its selection is worked out then)
//   telemetry  one connection's accounting (open, established, bytes, close) with metrics and
//              access log on, and with both off
//
// Prints a table and writes bench/policy-results.json. Nothing is asserted.
import { Writable } from 'node:stream';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { MeshPolicyEngine } from '../src/policy/engine.ts';
import { ConnectionTracker } from '../src/telemetry/connections.ts';
import { MeshMetrics } from '../src/telemetry/metrics.ts';
import type { MeshPolicyObject, Workload } from '../src/workloads/model.ts';
import { workloadSpiffeId } from '../src/workloads/model.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const say = (s: string) => process.stderr.write(`${s}\n`);

function timeIt(label: string, n: number, fn: (i: number) => void, warm = true): number {
  if (warm) for (let i = 0; i < Math.min(n, 10_000); i++) fn(i); // warm-up (JIT)
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) fn(i);
  const ns = Number(process.hrtime.bigint() - t0) / n;
  say(`${label.padEnd(60)} ${ns.toFixed(0).padStart(7)} ns`);
  return ns;
}

// --- policy -----------------------------------------------------------------------------------------
const NAMESPACES = 100;
const workloads: Workload[] = [];
for (let i = 0; i < 10_000; i++) {
  const ns = `ns-${i % NAMESPACES}`;
  const app = `app-${i % 50}`;
  workloads.push({ name: `${app}-${i}`, namespace: ns, serviceAccount: app, ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, node: 'node-a',
    captured: true, spiffeId: workloadSpiffeId('cluster.local', ns, app), labels: { app }, workload: app });
}
const policies: MeshPolicyObject[] = [];
for (let n = 0; n < NAMESPACES; n++) {
  const ns = n === 0 ? 'meshlet-system' : `ns-${n}`;
  for (let k = 0; k < 10; k++) {
    policies.push({ namespace: ns, name: `p-${k}`, spec: k === 9
      ? { action: 'DENY', rules: [{ from: [{ namespaces: ['quarantine'] }] }] }
      : { selector: { matchLabels: { app: `app-${(n * 10 + k) % 50}` } }, action: k === 8 ? 'AUDIT' : 'ALLOW',
          rules: [{ from: [{ principals: [`spiffe://cluster.local/ns/${ns}/sa/*`, 'spiffe://cluster.local/ns/ingress/sa/gateway'] }, { ipBlocks: ['10.200.0.0/16'] }], to: [{ ports: [8080, 8443] }] }] } });
  }
}
// JIT warm-up on an engine of its own, so the measured one starts with empty per-workload caches.
const warmup = new MeshPolicyEngine();
warmup.update({ policies, mtls: {} });
for (let i = 0; i < 20_000; i++) warmup.authorize({ sourcePrincipal: workloads[i % 10_000]!.spiffeId, sourceNamespace: 'ns-1', sourceIp: '10.0.0.1', destination: workloads[i % 10_000]!, destinationPort: 8080 });
const engine = new MeshPolicyEngine();
const t0 = performance.now();
engine.update({ policies, mtls: {} });
const compileMs = performance.now() - t0;
say(`compiled ${policies.length} policies in ${compileMs.toFixed(1)} ms`);
const conn = (w: Workload, src: Workload) => ({ sourcePrincipal: src.spiffeId, sourceNamespace: src.namespace, sourceIp: src.ip, destination: w, destinationPort: 8080 });
const results: Record<string, unknown> = { date: new Date().toISOString(), node: process.version, policies: policies.length, workloads: workloads.length, compileMs };
results.firstDecisionNs = timeIt('first decision per workload (selection worked out)', workloads.length, (i) => { engine.authorize(conn(workloads[i]!, workloads[(i * 7) % workloads.length]!)); }, false);
results.warmDecisionNs = timeIt('decision, warm (1,000 policies in the mesh)', 1_000_000, (i) => { engine.authorize(conn(workloads[i % workloads.length]!, workloads[(i * 7) % workloads.length]!)); });
const empty = new MeshPolicyEngine();
empty.update({ policies: [], mtls: {} });
results.noPolicyDecisionNs = timeIt('decision, no policies', 1_000_000, (i) => { empty.authorize(conn(workloads[i % workloads.length]!, workloads[(i * 7) % workloads.length]!)); });

// --- telemetry ---------------------------------------------------------------------------------------
// The access log goes to a stream that drops it: what is measured is building and serializing lines.
const sink = new Writable({ write(_chunk, _enc, cb) { cb(); } });
const on = new ConnectionTracker(pino({ level: 'info' }, sink), new MeshMetrics());
const off = new ConnectionTracker(pino({ level: 'silent' }, sink));
const lifecycle = (tracker: ConnectionTracker) => (i: number) => {
  const c = tracker.open('outbound', '10.0.0.1');
  c.set({ src: workloads[i % 500]!, dst: workloads[(i * 7) % 500]!, route: 'tunnel', mutualTls: true, destination: '10.0.0.2:8080' });
  c.established();
  c.info.bytesSent += 1024;
  c.info.bytesReceived += 1024;
  c.close({});
};
results.connectionTelemetryOnNs = timeIt('connection accounting, metrics + access log on', 200_000, lifecycle(on));
results.connectionTelemetryOffNs = timeIt('connection accounting, both off', 200_000, lifecycle(off));

const out = join(HERE, 'policy-results.json');
writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
say(`written to ${out}`);
