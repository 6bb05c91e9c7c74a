// `npm run bench:registry`: what knowing the cluster costs an agent.
//
// The Kubernetes API stand-in runs in a child process holding N pods (default 10,000) shaped like
// Deployment pods (owner references, env, volumes, probes, managedFields, conditions), spread over
// namespaces of which most are opted in. Each measurement runs in a fresh worker process with
// --expose-gc, so heaps do not mix:
//
//   meshlet   createKubernetesSource (field-selected, trimmed, paged; --page-size N) feeding a WorkloadRegistry
//   plain     a plain client-node ListWatch of all pods caching whole objects (no field selector,
//             no trimming): what the informer costs without those two levers
//
// Per worker: heap and RSS after GC before and after the first sync ("before" already includes
// importing @kubernetes/client-node, measured separately as importCost), time to first sync, and time
// from one pod change to the new snapshot. Writes bench/registry-results.json. Nothing is asserted.
import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { deploymentPod } from '../test/support/apiserver.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const STAND_IN = join(HERE, '..', 'test', 'support', 'apiserver-main.ts');
const { values: opts } = parseArgs({ options: {
  pods: { type: 'string', default: '10000' },
  namespaces: { type: 'string', default: '100' },
  nodes: { type: 'string', default: '200' },
  'page-size': { type: 'string' },
  worker: { type: 'string' },
  url: { type: 'string' },
  out: { type: 'string', default: join(HERE, 'registry-results.json') },
} });
const PODS = Number(opts.pods);
const say = (s: string) => process.stderr.write(`${s}\n`);

function gcMeasure(): { heapMiB: number; heapTotalMiB: number; externalMiB: number; rssMiB: number } {
  const gc = (globalThis as { gc?: () => void }).gc!;
  for (let i = 0; i < 3; i++) gc();
  const m = process.memoryUsage();
  return { heapMiB: m.heapUsed / 2 ** 20, heapTotalMiB: m.heapTotal / 2 ** 20, externalMiB: m.external / 2 ** 20, rssMiB: m.rss / 2 ** 20 };
}

// --- worker: one measurement in a fresh process ---------------------------------------------------
if (opts.worker) {
  const pino = (await import('pino')).default;
  const { KubeConfig, CoreV1Api, ListWatch, Watch } = await import('@kubernetes/client-node');
  const { createKubernetesSource } = await import('../src/workloads/kubernetes.ts');
  const { WorkloadRegistry } = await import('../src/workloads/registry.ts');
  const { standInKubeConfig } = await import('../test/support/apiserver.ts');
  const kc = new KubeConfig();
  kc.loadFromString(standInKubeConfig(opts.url!));
  const before = gcMeasure();
  const t0 = performance.now();
  let keep: unknown;
  let syncMs = 0;
  let count = 0;
  let changeMs: number | undefined;
  if (opts.worker === 'meshlet') {
    const registry = new WorkloadRegistry('node-0');
    let onChange: (() => void) | undefined;
    const source = createKubernetesSource({ kubeConfig: kc, trustDomain: 'cluster.local', log: pino({ level: 'silent' }), ...(opts['page-size'] ? { pageSize: Number(opts['page-size']) } : {}) });
    await new Promise<void>((resolveSync) => {
      void source.start({ onSnapshot: (s) => { registry.replace(s); if (!syncMs) { syncMs = performance.now() - t0; resolveSync(); } onChange?.(); }, onError: () => {} });
    });
    count = registry.snapshot!.workloads.length;
    keep = [source, registry];
    // One pod changes IP: time until the registry has it.
    const changed = new Promise<void>((r) => { onChange = () => { if (registry.findWorkload('10.255.255.1')) r(); }; });
    process.stdout.write(JSON.stringify({ ready: true }) + '\n');
    const tc = performance.now();
    await changed;
    changeMs = performance.now() - tc;
  } else {
    const core = kc.makeApiClient(CoreV1Api);
    const lw = new ListWatch('/api/v1/pods', new Watch(kc), () => core.listPodForAllNamespaces(), false);
    await lw.start();
    syncMs = performance.now() - t0;
    count = lw.list().length;
    keep = lw;
    process.stdout.write(JSON.stringify({ ready: true }) + '\n');
  }
  const afterSync = gcMeasure();
  process.stdout.write(JSON.stringify({ worker: opts.worker, count, syncMs, changeMs, before, after: afterSync, keep: keep !== undefined }) + '\n');
  process.exit(0);
}

// --- main -------------------------------------------------------------------------------------------
const api: ChildProcess = spawn(process.execPath, [STAND_IN], { stdio: ['pipe', 'pipe', 'inherit'] });
const lines = createInterface({ input: api.stdout! });
const replies: Array<(l: any) => void> = [];
lines.on('line', (l) => replies.shift()?.(JSON.parse(l)));
const next = () => new Promise<any>((r) => replies.push(r));
const hello = await next();
const send = (cmd: object) => { const p = next(); api.stdin!.write(JSON.stringify(cmd) + '\n'); return p; };

const NAMESPACES = Number(opts.namespaces);
const NODES = Number(opts.nodes);
say(`stand-in at ${hello.listening}: creating ${NAMESPACES} namespaces and ${PODS} pods on ${NODES} nodes`);
for (let n = 0; n < NAMESPACES; n++) {
  // 9 in 10 namespaces opted in: a mesh-heavy cluster, the expensive case for the registry.
  await send({ op: 'put', resource: 'namespaces', obj: { metadata: { name: `ns-${n}`, annotations: n % 10 === 9 ? {} : { 'meshlet.dev/capture': 'enabled' } } } });
}
let podBytes = 0;
const podSample: object[] = [];
for (let i = 0; i < PODS; i++) {
  const obj = deploymentPod(i, `ns-${i % NAMESPACES}`, `node-${i % NODES}`, `10.${16 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`);
  if (i < 100) podSample.push(obj);
  await send({ op: 'put', resource: 'pods', obj });
}
podBytes = podSample.reduce((n, o) => n + Buffer.byteLength(JSON.stringify(o)), 0) / podSample.length;

async function runWorker(kind: 'meshlet' | 'plain'): Promise<any> {
  const w = spawn(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), '--worker', kind, '--url', hello.listening,
    ...(opts['page-size'] ? ['--page-size', opts['page-size']] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
  const out = createInterface({ input: w.stdout! });
  return new Promise((resolveRun, reject) => {
    out.on('line', (l) => {
      const msg = JSON.parse(l);
      if (msg.ready && kind === 'meshlet') {
        void send({ op: 'put', resource: 'pods', obj: deploymentPod(0, 'ns-0', 'node-0', '10.255.255.1') });
      } else if (msg.worker) {
        resolveRun(msg);
      }
    });
    w.once('exit', (code) => { if (code !== 0) reject(new Error(`${kind} worker exited ${code}`)); });
  });
}

/** What loading @kubernetes/client-node costs a process, before it knows a single pod. */
async function importCost(): Promise<{ bareRssMiB: number; rssMiB: number; heapMiB: number }> {
  const code = `const m = () => { gc(); gc(); return process.memoryUsage(); }; const a = m(); await import('@kubernetes/client-node'); const b = m();
    console.log(JSON.stringify({ bareRssMiB: a.rss / 2 ** 20, rssMiB: (b.rss - a.rss) / 2 ** 20, heapMiB: (b.heapUsed - a.heapUsed) / 2 ** 20 }));`;
  const w = spawn(process.execPath, ['--expose-gc', '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  w.stdout!.on('data', (d) => { out += d; });
  await new Promise((r) => w.once('exit', r));
  return JSON.parse(out);
}

const results: Record<string, any> = { date: new Date().toISOString(), pods: PODS, namespaces: NAMESPACES, nodes: NODES, podJsonBytes: Math.round(podBytes) };
for (const kind of ['meshlet', 'plain'] as const) {
  const r = await runWorker(kind);
  const heapPerPodKiB = ((r.after.heapMiB - r.before.heapMiB) * 1024) / PODS;
  const rssPerPodKiB = ((r.after.rssMiB - r.before.rssMiB) * 1024) / PODS;
  results[kind] = { ...r, heapPerPodKiB, rssPerPodKiB };
  say(`${kind.padEnd(8)} objects ${r.count}  first sync ${r.syncMs.toFixed(0)} ms  heap +${(r.after.heapMiB - r.before.heapMiB).toFixed(1)} MiB ` +
    `(${heapPerPodKiB.toFixed(2)} KiB/pod)  RSS ${r.before.rssMiB.toFixed(0)} -> ${r.after.rssMiB.toFixed(0)} MiB (${rssPerPodKiB.toFixed(2)} KiB/pod)` +
    (r.changeMs !== undefined ? `  one change -> snapshot ${r.changeMs.toFixed(1)} ms` : ''));
}
results.clientNodeImport = await importCost();
say(`importing @kubernetes/client-node: +${results.clientNodeImport.rssMiB.toFixed(1)} MiB RSS, +${results.clientNodeImport.heapMiB.toFixed(1)} MiB heap`);
say(`pod JSON as served: ${results.podJsonBytes} bytes on average`);
api.stdin!.end();
writeFileSync(opts.out!, JSON.stringify(results, null, 2) + '\n');
say(`wrote ${opts.out}`);
