// `npm run bench:memory-modes` (root): an idle agent's RSS fed by a workloads file and by the
// Kubernetes API (the stand-in, test/support/apiserver.ts, in the agent's namespace), both with the
// same 1,000 pods (100 on the agent's node) and 20 Services, one data-plane worker, embedded CA. Each
// agent runs until ready and 10 s more; RSS and PSS are read then. Three starts each. Numbers in
// bench/README.md, "Agent memory in Kubernetes mode". Issue 25 is about the gap between the two.
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import { runCommand } from '../src/capture/exec.ts';
import { AGENT_NODE_FLAGS, CLI } from '../src/demo/lab-spec.ts';
import { PORTS } from '../src/ports.ts';
import { namespaceObject, nodeObject, podObject, serviceObject, standInKubeConfig } from '../test/support/apiserver.ts';

const PODS = 1000;
const NODES = 10;
const SERVICES = 20;
const RUNS = 3;
const ns = `meshlet-mem-${process.pid}`;
const dir = await mkdtemp(join(tmpdir(), 'meshlet-mem-'));
const node = (i: number) => `n${i}`;
const podIp = (i: number) => `10.${20 + (i % NODES)}.${Math.floor(i / 250)}.${(i % 250) + 1}`;
const app = (i: number) => `app${i % SERVICES}`;

const sh = async (cmd: string, args: string[]) => {
  const r = await runCommand(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};
const inNs = (cmd: string, args: string[], env: NodeJS.ProcessEnv = {}) => spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });

function memory(pid: number): { rss: number; pss: number } {
  const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
  const pss = Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))![1]) / 1024;
  return { rss, pss };
}

async function ready(): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const r = await runCommand('ip', ['netns', 'exec', ns, process.execPath, join(import.meta.dirname, '../src/demo/peer.ts'), 'get', '--url', `http://127.0.0.1:${PORTS.readiness}/healthz/ready`]);
    if (r.code === 0) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error('agent not ready after 60 s');
}

async function measure(label: string, args: string[]): Promise<void> {
  const out: Array<{ rss: number; pss: number }> = [];
  for (let i = 0; i < RUNS; i++) {
    const agent = inNs(process.execPath, [...AGENT_NODE_FLAGS, CLI, 'agent', '--node', node(0), '--ca-dir', join(dir, 'ca'), '--workers', '1', '--log-level', 'warn', ...args],
      { NODE_COMPILE_CACHE: join(dir, 'cc') });
    let log = '';
    agent.stderr!.on('data', (d) => { log += d; });
    agent.stdout!.on('data', (d) => { log += d; });
    try {
      await ready();
      await new Promise((r) => setTimeout(r, 10_000));
      // `ip netns exec` execs the command: the child's PID is the agent's.
      out.push(memory(agent.pid!));
    } catch (err) {
      throw new Error(`${label}: ${(err as Error).message}\n${log}`);
    } finally {
      agent.kill('SIGTERM');
      await new Promise((r) => agent.once('exit', r));
    }
  }
  console.log(`${label}: RSS ${out.map((m) => m.rss.toFixed(0)).join(', ')} MiB; PSS ${out.map((m) => m.pss.toFixed(0)).join(', ')} MiB`);
}

let api: ChildProcess | undefined;
try {
  await sh('ip', ['netns', 'add', ns]);
  await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  await sh(process.execPath, [CLI, 'ca', 'init', '--out', join(dir, 'ca'), '--trust-domain', 'cluster.local']);
  await sh('ip', ['netns', 'exec', ns, process.execPath, CLI, 'init']);
  await sh('env', [`NODE_COMPILE_CACHE=${join(dir, 'cc')}`, process.execPath, CLI, '--help']);

  // The same mesh twice: as a workloads file, and as objects in the API stand-in.
  const pods = Array.from({ length: PODS }, (_, i) => ({ name: `p${i}`, ip: podIp(i), node: node(i % NODES), app: app(i) }));
  const services = Array.from({ length: SERVICES }, (_, i) => ({ name: `s${i}`, clusterIP: `10.96.0.${i + 1}`, app: `app${i}` }));
  await writeFile(join(dir, 'w.yaml'), stringify({
    trustDomain: 'cluster.local',
    nodes: Array.from({ length: NODES }, (_, i) => ({ name: node(i), ip: `10.9.0.${i + 1}` })),
    workloads: pods.map((p) => ({ name: p.name, namespace: 'shop', serviceAccount: p.app, ip: p.ip, node: p.node, labels: { app: p.app } })),
    services: services.map((s) => ({ name: s.name, namespace: 'shop', clusterIP: s.clusterIP, ports: [{ name: 'http', port: 80, targetPort: 8080 }], selector: { app: s.app } })),
  }));
  api = inNs(process.execPath, [join(import.meta.dirname, '../test/support/apiserver-main.ts'), '--host', '127.0.0.1', '--port', '6443']);
  const lines = createInterface({ input: api.stdout! })[Symbol.asyncIterator]();
  const hello = JSON.parse((await lines.next()).value as string) as { listening: string; token: string };
  let id = 0;
  const put = async (resource: string, obj: object) => {
    api!.stdin!.write(`${JSON.stringify({ id: ++id, op: 'put', resource, obj })}\n`);
    const reply = JSON.parse((await lines.next()).value as string);
    if (!reply.ok) throw new Error(reply.error);
  };
  for (let i = 0; i < NODES; i++) await put('nodes', nodeObject(node(i)));
  await put('namespaces', namespaceObject('shop', 'enabled'));
  for (const p of pods) await put('pods', podObject({ name: p.name, namespace: 'shop', node: p.node, ip: p.ip, serviceAccount: p.app, labels: { app: p.app } }));
  for (const s of services) await put('services', serviceObject({ name: s.name, namespace: 'shop', clusterIP: s.clusterIP, ports: [{ name: 'http', port: 80, targetPort: 8080 }], selector: { app: s.app } }));
  await writeFile(join(dir, 'kubeconfig'), standInKubeConfig(hello.listening, hello.token));

  await measure('workloads file', ['--workloads', join(dir, 'w.yaml')]);
  await measure('Kubernetes API', ['--kubeconfig', join(dir, 'kubeconfig')]);
} finally {
  api?.kill('SIGTERM');
  await runCommand('ip', ['netns', 'del', ns]);
  await rm(dir, { recursive: true, force: true });
}
