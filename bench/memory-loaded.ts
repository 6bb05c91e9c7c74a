// `npm run bench:memory-loaded` (root): the agents' memory under the data-path benchmark's load
// (`npm run bench`: 1,000 requests/s over 16 keep-alive connections, then new connections, then one
// bulk transfer), with a mesh of 1,000 pods: the lab's client (node-a) and server (node-b), 98 more
// pods on each of those nodes, each its own service account (99 certificates per agent), and 800 on
// eight other nodes, read from
// the API stand-in (Kubernetes mode) and from a workloads file with the same pods (`--modes`,
// both by default, side by side). For each mode and worker count (all serving from the start;
// `--agent-args="--min-workers 1"` as the DaemonSet runs it, with the data planes serving after
// each part): both agents started, ready, 10 s idle, RSS read; then RSS after each part of the
// load and 15 s after it, the peak RSS since start
// (VmHWM), the agents' CPU seconds per GB of the bulk transfer, and the major page faults the load
// took (code read back from the Node binary). Each agent runs a copy of the Node binary of its own,
// as each node's agent maps its image's alone (`--shared-binary`: all on this one, whose pages the
// kernel then keeps for every process that maps them). Numbers in bench/README.md, "Agent memory
// in Kubernetes mode".
import type { ChildProcess } from 'node:child_process';
import { copyFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MeshLab } from '../src/demo/lab.ts';
import { processRunner } from '../src/demo/lab-spec.ts';
import { processCpuSeconds, processMajorFaults, processMinorFaults, processPeakRssMiB, processRssMiB } from '../src/demo/process-stats.ts';
import { assertNetnsPrerequisites } from '../src/netns/topology.ts';
import { driveStandIn } from '../test/support/apiserver-client.ts';
import { namespaceObject, nodeObject, podObject, standInKubeConfig } from '../test/support/apiserver.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const LOAD = join(HERE, 'load.ts');
const ECHO_PORT = 8080;
const HTTP_PORT = 8081;
const API_PORT = 6443;
const PODS = 1000;
const NS = 'bench';

const { values: opts } = parseArgs({ options: {
  workers: { type: 'string', default: '1,2' },
  seconds: { type: 'string', default: '20' },
  'bulk-mb': { type: 'string', default: '256' },
  // More agent flags, space-separated (e.g. "--heap-headroom 0": what V8's own heap sizing keeps).
  'agent-args': { type: 'string', default: '' },
  modes: { type: 'string', default: 'kubernetes,file' },
  'shared-binary': { type: 'boolean', default: false },
} });
await assertNetnsPrerequisites();
const say = (s: string) => process.stderr.write(`${s}\n`);

const lab = await MeshLab.create({
  apiNode: true,
  // `agent --node NAME ...`: that node's copy of the binary (copied below, before any agent starts).
  runner: {
    command: (role, args, labDir) => {
      const own = processRunner.command(role, args, labDir);
      return role === 'agent' && !opts['shared-binary'] ? { ...own, cmd: join(labDir, `node-${args[2]}`) } : own;
    },
  },
  nodes: [
    { name: 'node-a', pods: [{ name: 'client', namespace: NS }] },
    { name: 'node-b', pods: [{ name: 'server', namespace: NS }] },
  ],
});

const ms = (v: number) => v.toFixed(2);
const memory = (pid: number) => ({ rss: Math.round(processRssMiB(pid)), peak: Math.round(processPeakRssMiB(pid)) });

async function run(pod: string, args: string[]): Promise<any> {
  const r = await lab.topo.exec(lab.pod(pod).ns, process.execPath, [LOAD, ...args]);
  if (r.code !== 0) throw new Error(`load ${args.join(' ')} in ${pod} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

let api: ChildProcess | undefined;
const rows: string[] = [];
try {
  // The API stand-in in its namespace on the underlay, as in test/e2e/kubernetes.test.ts.
  api = lab.topo.spawn(lab.apiNode!.ns, process.execPath, [join(HERE, '../test/support/apiserver-main.ts'), '--host', lab.apiNode!.ip, '--port', String(API_PORT)],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const { listening, put } = await driveStandIn(api);
  const others = Array.from({ length: 8 }, (_, i) => `n${i + 2}`);
  for (const n of [...lab.meshNodes.map((m) => m.name), ...others]) await put('nodes', nodeObject(n));
  await put('namespaces', namespaceObject(NS, 'enabled'));
  for (const name of ['client', 'server']) {
    const p = lab.pod(name);
    await put('pods', podObject({ name, namespace: NS, node: p.node.name, serviceAccount: name, ip: p.ip, hostIP: p.node.ip }));
  }
  // The rest of the mesh: addresses no interface holds, 98 on each lab node, 100 on each other node;
  // a service account per pod on a lab node (an identity, so a certificate, is per service account).
  const rest = Array.from({ length: PODS - 2 }, (_, i) => ({
    name: `p${i}`, namespace: NS, serviceAccount: `sa${i % 98}`, ip: `10.200.${Math.floor(i / 250)}.${(i % 250) + 1}`,
    node: i < 98 ? 'node-a' : i < 196 ? 'node-b' : others[(i - 196) % others.length]!,
  }));
  for (const pod of rest) await put('pods', podObject(pod));
  // The same mesh as a workloads file (the other nodes at addresses no interface holds).
  const doc = lab.workloadsDocument() as { nodes: object[]; workloads: object[] };
  await lab.writeWorkloads({
    ...doc, nodes: [...doc.nodes, ...others.map((name, i) => ({ name, ip: `10.199.0.${i + 1}` }))],
    workloads: [...doc.workloads, ...rest.map((p) => ({ ...p, captured: true, labels: { app: p.serviceAccount } }))],
  });
  const kubeconfig = join(lab.dir, 'kubeconfig');
  await writeFile(kubeconfig, standInKubeConfig(listening));
  for (const node of lab.meshNodes) await lab.initCapture(node);
  for (const node of lab.meshNodes) await copyFile(process.execPath, join(lab.dir, `node-${node.name}`));
  await lab.startServer('server', ECHO_PORT);
  const http = lab.topo.spawn(lab.pod('server').ns, process.execPath, [LOAD, 'http-server', '--port', String(HTTP_PORT)]);
  await new Promise((r) => http.stdout!.once('data', r));
  const server = lab.pod('server').ip;

  for (const mode of opts.modes.split(',')) for (const workers of opts.workers.split(',')) {
    const workloads = mode === 'file' ? {} : { workloads: ['--kubeconfig', kubeconfig, '--trust-domain', lab.trustDomain] };
    for (const node of lab.meshNodes) await lab.startAgent(node, ['--workers', workers, '--min-workers', workers, ...opts['agent-args'].split(' ').filter(Boolean)], workloads);
    await Promise.all(lab.meshNodes.map((n) => lab.waitReady(n, 60_000)));
    const pids = lab.meshNodes.map((n) => lab.agents.get(n.name)!.child.pid!);
    await new Promise((r) => setTimeout(r, 10_000));
    const idle = pids.map(memory);
    const major0 = pids.map(processMajorFaults);
    say(`${mode}, ${workers} worker(s): idle ${idle.map((m) => m.rss).join(', ')} MiB; load ...`);
    const url = `http://${server}:${HTTP_PORT}/`;
    const warm = await run('client', ['latency', '--url', url, '--rate', '1000', '--seconds', '2', '--connections', '16']);
    const latency = await run('client', ['latency', '--url', url, '--rate', '1000', '--seconds', opts.seconds, '--connections', '16']);
    const afterLatency = pids.map(memory);
    // Data planes serving after each part (with --min-workers below --workers, more start under load).
    const serving = async () => (await Promise.all(lab.meshNodes.map(async (n) => (await lab.configDump(n)).workers as number))).join('/');
    const servingAfter = [await serving()];
    const conns = await run('client', ['connrate', '--host', server, '--port', String(ECHO_PORT), '--seconds', '5', '--concurrency', '32']);
    const afterConnections = pids.map(memory);
    servingAfter.push(await serving());
    // The agents' CPU on the bulk transfer: what the heap headroom and the malloc tuning trade memory for.
    const cpu0 = pids.map(processCpuSeconds);
    const faults0 = pids.map(processMinorFaults);
    await run('client', ['bulk', '--host', server, '--port', String(ECHO_PORT), '--bytes', String(Number(opts['bulk-mb']) * 1048576)]);
    const bulkCpuPerGb = pids.map((pid, i) => ((processCpuSeconds(pid) - cpu0[i]!) / (Number(opts['bulk-mb']) / 1024)).toFixed(2));
    const bulkFaults = pids.map((pid, i) => processMinorFaults(pid) - faults0[i]!);
    const loaded = pids.map(memory);
    servingAfter.push(await serving());
    const loadMajorFaults = pids.map((pid, i) => processMajorFaults(pid) - major0[i]!);
    // What stays once the load is over (the periodic malloc trim runs every 10 s by default).
    await new Promise((r) => setTimeout(r, 15_000));
    const settled = pids.map(memory);
    const rss = (ms: Array<{ rss: number }>) => ms.map((m) => m.rss).join(', ');
    rows.push(`| ${mode} | ${workers} | ${rss(idle)} | ${rss(afterLatency)} | ${rss(afterConnections)} | ${rss(loaded)} | ${rss(settled)} | ${loaded.map((m) => m.peak).join(', ')} | ${bulkCpuPerGb.join(', ')} | ${bulkFaults.join(', ')} | ${loadMajorFaults.join(', ')} | ${latency.requests} | ${conns.connections} | ${ms(warm.p99)}, ${ms(warm.max)} | ${ms(latency.p99)} | ${servingAfter.join(', ')} |`);
    for (const node of lab.meshNodes) await lab.stopAgent(node.name);
  }
  http.kill();
} finally {
  api?.stdin?.end();
  await lab.destroy();
}
say('agents node-a (client side), node-b (server side), MiB:');
console.log('| workloads from | workers | idle RSS | after 1,000 req/s | after new connections | after bulk | 15 s later | peak RSS | bulk CPU s per GB | bulk minor faults | major faults, whole load | requests in the latency run | new connections | first 2 s p99, max ms | latency run p99 ms | data planes serving after 1,000 req/s, new connections, bulk |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
console.log(rows.join('\n'));
