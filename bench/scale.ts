// `npm run bench:scale` (no root): what the address slices (issue 23) change at scale. The API
// stand-in runs in a child process, the address controller in another (as a CA replica runs it),
// and simulated agents are raw watch streams in this process, counting the bytes they receive.
//
//   bytes       50 nodes of 30 Deployment-shaped pods; 40 more pods go through a life each
//               (created, scheduled, running with an IP, ready, terminating, deleted): the bytes each
//               node's watches receive, today (every Pod) against slices (its own node's Pods and
//               every slice), per pod life and per node
//   heap        agent heap and RSS per remote workload built from slices, 10,000 and 100,000 pods,
//               each in a fresh process with --expose-gc (workers of this script)
//   controller  --big-pods (150,000) in the stand-in: the controller's first sync, memory, and CPU for
//               1,000 pods changing address at once; then 100 agents' slice watches and 200 new pods
//               at 10 a second: time from a pod's address to each agent seeing it (p50, p99)
//
// Numbers in bench/README.md, "What knowing the cluster costs". Nothing is asserted.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ADDRESS_SLICE, readSlice, sliceObject } from '../src/addresses/slices.ts';
import { apiPath } from '../src/kube/api.ts';
import { processCpuSeconds, processRssMiB, processRssParts } from '../src/demo/process-stats.ts';
import { POD_FIELD_SELECTOR } from '../src/workloads/kubernetes-objects.ts';
import { driveStandIn, type StandInProcess } from '../test/support/apiserver-client.ts';
import { deploymentPod, namespaceObject, standInKubeConfig } from '../test/support/apiserver.ts';
import { eventually } from '../test/support/wait.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const STAND_IN = join(HERE, '..', 'test', 'support', 'apiserver-main.ts');
const CONTROLLER = join(HERE, '..', 'test', 'support', 'address-controller-main.ts');
const { values: opts } = parseArgs({ options: {
  worker: { type: 'string' },
  workloads: { type: 'string' },
  parts: { type: 'string', default: 'bytes,heap,controller' },
  'big-pods': { type: 'string', default: '150000' },
  agents: { type: 'string', default: '100' },
  // The controller on CPU 1, the stand-in and the simulated agents on CPU 0: in a cluster the
  // controller does not share its core with the apiserver.
  pin: { type: 'boolean', default: false },
} });
const pinned = (cpu: number, cmd: string, args: string[]): [string, string[]] => (opts.pin ? ['taskset', ['-c', String(cpu), cmd, ...args]] : [cmd, args]);
if (opts.pin && !opts.worker) execFileSync('taskset', ['-p', '-c', '0', String(process.pid)]);
const say = (s: string) => process.stderr.write(`${s}\n`);
const NS = 'meshlet-system';
const SLICES = apiPath(ADDRESS_SLICE, { namespace: NS });
const nodeOf = (i: number, nodes: number) => `node-${i % nodes}`;
const ipOf = (i: number) => `10.${16 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;

// --- worker: an agent's heap for N remote workloads from slices ------------------------------------
if (opts.worker === 'heap') {
  const { slimAddressSlice, workloadsFromSlices } = await import('../src/addresses/slices.ts');
  const { WorkloadRegistry } = await import('../src/workloads/registry.ts');
  const n = Number(opts.workloads);
  const nodes = Math.ceil(n / 30);
  // The list as the apiserver sends it: text, parsed as the informer parses it.
  const bySlice = new Map<string, object[]>();
  for (let i = 0; i < n; i++) {
    const node = nodeOf(i, nodes);
    const list = bySlice.get(node) ?? [];
    list.push({ ip: ipOf(i), namespace: `ns-${i % 100}`, serviceAccount: `app-${i % 50}`, node, captured: true, workload: `app-${i % 50}` });
    bySlice.set(node, list);
  }
  const text = JSON.stringify({ items: [...bySlice].map(([node, entries]) => sliceObject(NS, `${node}-a1b2c3d4`, node, entries as never, '100')) });
  bySlice.clear();
  const measure = () => { const gc = (globalThis as { gc?: () => void }).gc!; gc(); gc(); gc(); return process.memoryUsage(); };
  const before = measure();
  const cache = (JSON.parse(text) as { items: unknown[] }).items.map(slimAddressSlice);
  const registry = new WorkloadRegistry('node-self');
  registry.replace({ trustDomain: 'cluster.local', nodes: [], workloads: workloadsFromSlices('cluster.local', cache, 'node-self', new Set()), policies: [], mtls: {}, services: [] });
  const after = measure();
  process.stdout.write(`${JSON.stringify({ n, held: registry.snapshot!.workloads.length, heapBytes: (after.heapUsed - before.heapUsed) / n, rssBytes: (after.rss - before.rss) / n, keep: cache.length })}\n`);
  process.exit(0);
}

/** A raw watch stream, as an agent's informer holds one: counts bytes, hands over each event. */
function watch(url: string, token: string, path: string, query: Record<string, string>, onEvent?: (ev: { type: string; object: any }) => void): { bytes: () => number; close: () => void } {
  let bytes = 0;
  let buffered = '';
  const q = new URLSearchParams({ watch: '1', ...query });
  const req = http.get(`${url}${path}?${q}`, { headers: { authorization: `Bearer ${token}` } }, (res) => {
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      bytes += Buffer.byteLength(chunk);
      if (!onEvent) return;
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line) onEvent(JSON.parse(line));
      }
    });
  });
  req.on('error', () => undefined);
  return { bytes: () => bytes, close: () => req.destroy() };
}

async function getJson<T>(url: string, token: string, path: string, query: Record<string, string> = {}): Promise<T> {
  const res = await fetch(`${url}${path}?${new URLSearchParams(query)}`, { headers: { authorization: `Bearer ${token}` } });
  return res.json() as Promise<T>;
}

/** Every entry the slices hold now, by IP. */
async function sliceIps(api: StandInProcess): Promise<Set<string>> {
  const list = await getJson<{ items: unknown[] }>(api.listening, api.token, SLICES);
  return new Set(list.items.flatMap((o) => readSlice(o).slice.entries.map((e) => e.ip)));
}

/** The test suite's poll, with the long default a first sync of 150,000 pods needs. */
const until = (what: string, probe: () => Promise<boolean>, timeoutMs = 600_000) => eventually(what, probe, timeoutMs, 100);

async function cluster(pods: number, nodes: number, heapMiB = 2048): Promise<{ api: StandInProcess; child: ChildProcess; controller: ChildProcess; dir: string }> {
  const child = spawn(...pinned(0, process.execPath, [`--max-old-space-size=${heapMiB}`, STAND_IN]), { stdio: ['pipe', 'pipe', 'inherit'] });
  const api = await driveStandIn(child);
  await api.put('namespaces', namespaceObject('shop', 'enabled'));
  for (let from = 0; from < pods; from += 10_000) await api.call({ op: 'fill', from, count: Math.min(10_000, pods - from), namespace: 'shop', nodes });
  const dir = mkdtempSync(join(tmpdir(), 'meshlet-scale-'));
  writeFileSync(join(dir, 'kubeconfig'), standInKubeConfig(api.listening, api.token));
  // CONTROLLER_NODE_ARGS: e.g. --cpu-prof, to see where a round of the controller goes.
  const nodeArgs = (process.env.CONTROLLER_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const controller = spawn(...pinned(1, process.execPath, ['--expose-gc', ...nodeArgs, CONTROLLER, '--kubeconfig', join(dir, 'kubeconfig'), '--identity', 'ca-0']), { stdio: ['ignore', 'pipe', 'inherit'] });
  return { api, child, controller, dir };
}

/** The controller's memory after a full GC (SIGUSR2: address-controller-main.ts), in MiB. */
async function controllerMemory(controller: ChildProcess): Promise<{ heapUsedMiB: number; heapTotalMiB: number; externalMiB: number; rssMiB: number; anonMiB: number; fileMiB: number }> {
  const line = new Promise<NodeJS.MemoryUsage>((resolve) => {
    const lines = createInterface({ input: controller.stdout! });
    lines.on('line', (l) => {
      const m = (JSON.parse(l) as { memory?: NodeJS.MemoryUsage }).memory;
      if (m) { lines.close(); resolve(m); }
    });
  });
  controller.kill('SIGUSR2');
  const m = await line;
  const mib = (b: number) => b / 1048576;
  return { heapUsedMiB: mib(m.heapUsed), heapTotalMiB: mib(m.heapTotal), externalMiB: mib(m.external), rssMiB: mib(m.rss), ...processRssParts(controller.pid!) };
}

async function stop(c: { child: ChildProcess; controller: ChildProcess; dir: string }): Promise<void> {
  c.controller.kill('SIGTERM');
  await new Promise((r) => c.controller.once('exit', r));
  c.child.kill('SIGKILL');
  rmSync(c.dir, { recursive: true, force: true });
}

const parts = opts.parts.split(',');
const results: Record<string, unknown> = { date: new Date().toISOString() };

if (parts.includes('bytes')) {
  const NODES = 50;
  const PER_NODE = 30;
  const LIVES = 40;
  const c = await cluster(NODES * PER_NODE, NODES);
  try {
    const { api } = c;
    await until('the first slices', async () => (await sliceIps(api)).size === NODES * PER_NODE);
    const rv = (await getJson<{ metadata: { resourceVersion: string } }>(api.listening, api.token, '/api/v1/pods', { limit: '1' })).metadata.resourceVersion;
    const today = Array.from({ length: NODES }, () => watch(api.listening, api.token, '/api/v1/pods', { resourceVersion: rv, fieldSelector: POD_FIELD_SELECTOR }));
    const ownPods = Array.from({ length: NODES }, (_, k) => watch(api.listening, api.token, '/api/v1/pods', { resourceVersion: rv, fieldSelector: `${POD_FIELD_SELECTOR},spec.nodeName=node-${k}` }));
    const slices = Array.from({ length: NODES }, () => watch(api.listening, api.token, SLICES, { resourceVersion: rv }));
    await new Promise((r) => setTimeout(r, 500));
    for (let k = 0; k < LIVES; k++) {
      const i = NODES * PER_NODE + k;
      const ready = deploymentPod(i, 'shop', nodeOf(i, NODES), ipOf(i)) as any;
      const stage = (change: (p: any) => void) => { const p = structuredClone(ready); change(p); return api.put('pods', p); };
      await stage((p) => { delete p.spec.nodeName; p.status = { phase: 'Pending', qosClass: 'Burstable' }; });
      await stage((p) => { p.status = { phase: 'Pending', qosClass: 'Burstable', conditions: [{ type: 'PodScheduled', status: 'True' }] }; });
      await stage((p) => { p.status.conditions = p.status.conditions.map((x: any) => ({ ...x, status: x.type === 'Ready' || x.type === 'ContainersReady' ? 'False' : 'True' })); p.status.containerStatuses[0].ready = false; });
      await until(`pod ${i} in the slices`, async () => (await sliceIps(api)).has(ipOf(i)));
      await api.put('pods', ready as never);
      await stage((p) => { p.metadata.deletionTimestamp = '2026-11-24T11:00:00Z'; p.metadata.deletionGracePeriodSeconds = 30; });
      await api.call({ op: 'remove', resource: 'pods', namespace: 'shop', name: ready.metadata.name });
      await until(`pod ${i} gone from the slices`, async () => !(await sliceIps(api)).has(ipOf(i)));
    }
    await new Promise((r) => setTimeout(r, 1_000));
    const sum = (ws: Array<{ bytes: () => number }>) => ws.reduce((n, w) => n + w.bytes(), 0);
    const perLife = (bytes: number) => Math.round(bytes / (LIVES * NODES));
    const r = { nodes: NODES, podsPerNode: PER_NODE, lives: LIVES, todayBytesPerLifePerNode: perLife(sum(today)),
      slicesBytesPerLifePerNode: perLife(sum(ownPods) + sum(slices)), ofWhichOwnPods: perLife(sum(ownPods)), ofWhichSlices: perLife(sum(slices)) };
    results.bytes = r;
    say(`bytes per pod life per node: today ${r.todayBytesPerLifePerNode}, with slices ${r.slicesBytesPerLifePerNode} (own node's Pods ${r.ofWhichOwnPods}, slices ${r.ofWhichSlices}): ${(r.todayBytesPerLifePerNode / r.slicesBytesPerLifePerNode).toFixed(1)}x less`);
    for (const w of [...today, ...ownPods, ...slices]) w.close();
  } finally {
    await stop(c);
  }
}

if (parts.includes('heap')) {
  const heap: unknown[] = [];
  for (const n of [10_000, 100_000]) {
    const w = spawn(process.execPath, ['--expose-gc', '--max-semi-space-size=2', fileURLToPath(import.meta.url), '--worker', 'heap', '--workloads', String(n)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    w.stdout!.on('data', (d) => { out += d; });
    await new Promise((r) => w.once('exit', r));
    const r = JSON.parse(out) as { n: number; heapBytes: number; rssBytes: number };
    heap.push(r);
    say(`${n} remote workloads from slices: ${r.heapBytes.toFixed(0)} bytes of heap and ${r.rssBytes.toFixed(0)} of RSS each`);
  }
  results.heap = heap;
}

if (parts.includes('controller')) {
  const PODS = Number(opts['big-pods']);
  const AGENTS = Number(opts.agents);
  const NODES = Math.ceil(PODS / 30);
  const t0 = Date.now();
  const c = await cluster(PODS, NODES, 12_288);
  try {
    const { api } = c;
    say(`stand-in holds ${PODS} pods on ${NODES} nodes (${((Date.now() - t0) / 1000).toFixed(0)} s); controller syncing`);
    const t1 = Date.now();
    await until('the first slices', async () => (await sliceIps(api)).size === PODS);
    const sync = { seconds: (Date.now() - t1) / 1000, rssMiB: processRssMiB(c.controller.pid!), cpuSeconds: processCpuSeconds(c.controller.pid!) };
    say(`controller: first sync of ${PODS} pods in ${sync.seconds.toFixed(1)} s, RSS ${sync.rssMiB.toFixed(0)} MiB, CPU ${sync.cpuSeconds.toFixed(1)} s`);
    const heap = await controllerMemory(c.controller);
    say(`controller after a full GC: heap used ${heap.heapUsedMiB.toFixed(0)} of ${heap.heapTotalMiB.toFixed(0)} MiB, external ${heap.externalMiB.toFixed(0)} MiB, RSS ${heap.rssMiB.toFixed(0)} MiB (anonymous ${heap.anonMiB.toFixed(0)}, files ${heap.fileMiB.toFixed(0)})`);
    Object.assign(sync, { afterGc: heap });

    // 1,000 pods change address at once (a node's pods rescheduled, a rollout).
    const cpu0 = processCpuSeconds(c.controller.pid!);
    for (let i = 0; i < 1000; i++) await api.put('pods', deploymentPod(i, 'shop', nodeOf(i, NODES), `10.250.${i >> 8}.${i & 255}`) as never);
    await until('1,000 new addresses', async () => { const ips = await sliceIps(api); return ips.has('10.250.3.231') && !ips.has(ipOf(999)); });
    const churn = { cpuSecondsPer1000: processCpuSeconds(c.controller.pid!) - cpu0, rssMiB: processRssMiB(c.controller.pid!) };
    say(`controller: 1,000 address changes took ${churn.cpuSecondsPer1000.toFixed(2)} CPU s; RSS ${churn.rssMiB.toFixed(0)} MiB`);

    // 100 agents' slice watches; 200 new pods at 10 a second; when does each agent see each address?
    const rv = (await getJson<{ metadata: { resourceVersion: string } }>(api.listening, api.token, SLICES, { limit: '1' })).metadata.resourceVersion;
    const createdAt = new Map<string, number>();
    const delays: number[] = [];
    const agents = Array.from({ length: AGENTS }, () => {
      const seen = new Set<string>();
      return watch(api.listening, api.token, SLICES, { resourceVersion: rv }, (ev) => {
        if (ev.type !== 'ADDED' && ev.type !== 'MODIFIED') return;
        for (const e of ev.object.entries ?? []) {
          const at = createdAt.get(e.ip);
          if (at !== undefined && !seen.has(e.ip)) { seen.add(e.ip); delays.push(Date.now() - at); }
        }
      });
    });
    await new Promise((r) => setTimeout(r, 1_000));
    const NEW = 200;
    for (let k = 0; k < NEW; k++) {
      const i = PODS + k;
      const ip = `10.251.${k >> 8}.${k & 255}`;
      await api.put('pods', deploymentPod(i, 'shop', nodeOf(i, NODES), ip) as never);
      createdAt.set(ip, Date.now());
      await new Promise((r) => setTimeout(r, 100));
    }
    await until('every agent saw every new pod', async () => delays.length >= NEW * AGENTS, 120_000);
    delays.sort((a, b) => a - b);
    const q = (p: number) => delays[Math.min(delays.length - 1, Math.floor(p * delays.length))]!;
    const propagation = { agents: AGENTS, newPods: NEW, p50Ms: q(0.5), p99Ms: q(0.99), maxMs: delays.at(-1) };
    say(`propagation to ${AGENTS} agents: p50 ${propagation.p50Ms} ms, p99 ${propagation.p99Ms} ms, max ${propagation.maxMs} ms`);
    for (const a of agents) a.close();
    const settled = await controllerMemory(c.controller);
    say(`controller at the end, after a full GC: heap used ${settled.heapUsedMiB.toFixed(0)} of ${settled.heapTotalMiB.toFixed(0)} MiB, RSS ${settled.rssMiB.toFixed(0)} MiB (anonymous ${settled.anonMiB.toFixed(0)}, files ${settled.fileMiB.toFixed(0)})`);
    results.controller = { pods: PODS, nodes: NODES, sync, churn, propagation, settled };
  } finally {
    await stop(c);
  }
}

writeFileSync(join(HERE, 'scale-results.json'), `${JSON.stringify(results, null, 2)}\n`);
