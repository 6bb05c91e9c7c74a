// `npm run bench:memory-modes` (root): the RSS of an idle agent and of the CA service, as a cluster
// runs them (the agent gets its certificates from the CA service), with the mesh read two ways:
// from a workloads file (the CA: a tokens file and the same workloads file) and from the Kubernetes
// API (the stand-in, test/support/apiserver.ts; the CA: TokenReview, pods, its root in a Secret).
// The same 1,000 pods (100 on the agent's node, each its own service account, so 100 certificates:
// an identity is per service account) and 20 Services; one
// data-plane worker, or WORKERS (all serving: MIN_WORKERS says fewer); MESHLET_ARGS go to both processes (`--malloc-trim=0s`); RUNS and
// MODES (file,kubernetes) narrow it. Each run starts the CA, then the agent; once the agent is
// ready and 10 s more, both are read: RSS, PSS, and the peak RSS since start; RSS again LATER seconds later (20).
// Three runs each; the first of a mode fills the compile cache for that mode's modules. The agent and
// the CA each run a copy of the Node binary of their own, as on a node where the agent's image is
// its own (the kernel shares a binary's pages among the processes that map it, so the bench's own
// processes would keep them in; SHARED_BINARY=1 runs them all on this one). Numbers in
// bench/README.md, "Agent memory in Kubernetes mode".
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { runCommand } from '../src/capture/exec.ts';
import { AGENT_NODE_FLAGS, CLI } from '../src/demo/lab-spec.ts';
import { processPeakRssMiB, processPssMiB, processRssMiB } from '../src/demo/process-stats.ts';
import { PORTS } from '../src/ports.ts';
import { driveStandIn } from '../test/support/apiserver-client.ts';
import { namespaceObject, nodeObject, podObject, serviceObject, standInKubeConfig } from '../test/support/apiserver.ts';

const PODS = 1000;
const NODES = 10;
const SERVICES = 20;
const RUNS = Number(process.env.RUNS ?? 3);
const MODES = (process.env.MODES ?? 'file,kubernetes').split(',');
const WORKERS = process.env.WORKERS ?? '1';
const MIN_WORKERS = process.env.MIN_WORKERS ?? WORKERS;
const EXTRA = (process.env.MESHLET_ARGS ?? '').split(' ').filter(Boolean);
const SHARED_BINARY = process.env.SHARED_BINARY === '1';
const LATER_S = Number(process.env.LATER ?? 20);
const ns = `meshlet-mem-${process.pid}`;
const dir = await mkdtemp(join(tmpdir(), 'meshlet-mem-'));
const node = (i: number) => `n${i}`;
const podIp = (i: number) => `10.${20 + (i % NODES)}.${Math.floor(i / 250)}.${(i % 250) + 1}`;
const app = (i: number) => `app${i % SERVICES}`;
const TOKEN = 'bench-node-token';
const SYSTEM_NS = 'meshlet-system';

const sh = async (cmd: string, args: string[]) => {
  const r = await runCommand(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
};
const inNs = (cmd: string, args: string[], env: NodeJS.ProcessEnv = {}) => spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });

type Memory = { rss: number; pss: number; peak: number };

/** RSS and PSS now, and the peak RSS since start (the agent's start, the CA's signing). */
const memory = (pid: number): Memory => ({ rss: processRssMiB(pid), pss: processPssMiB(pid), peak: processPeakRssMiB(pid) });

async function ready(what: string, url: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if ((await runCommand('ip', ['netns', 'exec', ns, 'curl', '-skf', '-o', '/dev/null', url])).code === 0) return;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what} not ready after 60 s`);
}

/** A meshlet process in the namespace, its output kept for the error message. */
function meshlet(args: string[]): { child: ChildProcess; log: () => string } {
  const exe = SHARED_BINARY ? process.execPath : join(dir, `node-${args[0]}`);
  const child = inNs(exe, [...AGENT_NODE_FLAGS, CLI, ...args, ...EXTRA, '--log-level', 'warn'], { NODE_COMPILE_CACHE: join(dir, 'cc') });
  let log = '';
  child.stderr!.on('data', (d) => { log += d; });
  child.stdout!.on('data', (d) => { log += d; });
  return { child, log: () => log };
}

async function stop(p: { child: ChildProcess }): Promise<void> {
  if (p.child.exitCode !== null) return;
  p.child.kill('SIGTERM');
  await new Promise((r) => p.child.once('exit', r));
}

async function measure(label: string, caArgs: string[], agentArgs: string[], beforeAgent: () => Promise<void> = async () => undefined): Promise<void> {
  const out = { agent: [] as Memory[], ca: [] as Memory[], agentLater: [] as number[], caLater: [] as number[] };
  for (let i = 0; i < RUNS; i++) {
    const ca = meshlet(['ca', 'serve', '--listen-address', '127.0.0.1', '--metrics', 'off', ...caArgs]);
    let agent: ReturnType<typeof meshlet> | undefined;
    try {
      await ready('CA', `https://127.0.0.1:${PORTS.ca}/healthz/ready`);
      await beforeAgent();
      agent = meshlet(['agent', '--node', node(0), '--workers', WORKERS, '--min-workers', MIN_WORKERS, '--ca-url', `https://127.0.0.1:${PORTS.ca}`,
        '--token-file', join(dir, 'token'), '--trust-bundle', join(dir, 'bundle.pem'), ...agentArgs]);
      await ready('agent', `http://127.0.0.1:${PORTS.readiness}/healthz/ready`);
      // As in a cluster while idle: kubelet's readiness probes and a Prometheus scrape every 10 s.
      const get = (url: string) => runCommand('ip', ['netns', 'exec', ns, 'curl', '-sk', '-o', '/dev/null', url]);
      const probes = setInterval(() => {
        for (const url of [`http://127.0.0.1:${PORTS.readiness}/healthz/ready`, `http://127.0.0.1:${PORTS.metrics}/metrics`, `https://127.0.0.1:${PORTS.ca}/healthz/ready`]) void get(url);
      }, 10_000).unref();
      await new Promise((r) => setTimeout(r, 10_000));
      // `ip netns exec` execs the command: the child's PID is meshlet's.
      out.agent.push(memory(agent.child.pid!));
      out.ca.push(memory(ca.child.pid!));
      // Idle longer: past a periodic malloc trim whatever the moment start-up ended.
      await new Promise((r) => setTimeout(r, LATER_S * 1000));
      out.agentLater.push(processRssMiB(agent.child.pid!));
      out.caLater.push(processRssMiB(ca.child.pid!));
      clearInterval(probes);
    } catch (err) {
      throw new Error(`${label}: ${(err as Error).message}\nCA: ${ca.log()}\nagent: ${agent?.log() ?? ''}`);
    } finally {
      if (agent) await stop(agent);
      await stop(ca);
    }
  }
  const row = (ms: Memory[], later: number[]) => [...(['rss', 'pss', 'peak'] as const).map((k) => `${k === 'peak' ? 'peak RSS' : k.toUpperCase()} ${ms.map((m) => m[k].toFixed(0)).join(', ')} MiB`),
    `RSS ${10 + LATER_S} s idle ${later.map((m) => m.toFixed(0)).join(', ')} MiB`].join('; ');
  console.log(`${label}, agent (${WORKERS} worker${WORKERS === '1' ? '' : 's'}${EXTRA.length ? `, ${EXTRA.join(' ')}` : ''}${SHARED_BINARY ? ', shared binary' : ''}): ${row(out.agent, out.agentLater)}`);
  console.log(`${label}, CA service: ${row(out.ca, out.caLater)}`);
}

let api: ChildProcess | undefined;
try {
  await sh('ip', ['netns', 'add', ns]);
  await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  await sh('ip', ['netns', 'exec', ns, process.execPath, CLI, 'init']);
  for (const role of ['agent', 'ca']) await copyFile(process.execPath, join(dir, `node-${role}`));
  await sh('env', [`NODE_COMPILE_CACHE=${join(dir, 'cc')}`, process.execPath, CLI, '--help']);

  // The same mesh twice: as a workloads file, and as objects in the API stand-in.
  const pods = Array.from({ length: PODS }, (_, i) => ({ name: `p${i}`, ip: podIp(i), node: node(i % NODES), app: app(i), sa: `sa${Math.floor(i / NODES)}` }));
  const services = Array.from({ length: SERVICES }, (_, i) => ({ name: `s${i}`, clusterIP: `10.96.0.${i + 1}`, app: `app${i}` }));
  await writeFile(join(dir, 'w.yaml'), stringify({
    trustDomain: 'cluster.local',
    nodes: Array.from({ length: NODES }, (_, i) => ({ name: node(i), ip: `10.9.0.${i + 1}` })),
    workloads: pods.map((p) => ({ name: p.name, namespace: 'shop', serviceAccount: p.sa, ip: p.ip, node: p.node, labels: { app: p.app } })),
    services: services.map((s) => ({ name: s.name, namespace: 'shop', clusterIP: s.clusterIP, ports: [{ name: 'http', port: 80, targetPort: 8080 }], selector: { app: s.app } })),
  }));
  await writeFile(join(dir, 'token'), TOKEN);
  await writeFile(join(dir, 'tokens.yaml'), stringify({ tokens: [{ node: node(0), token: TOKEN }] }));
  api = inNs(process.execPath, [join(import.meta.dirname, '../test/support/apiserver-main.ts'), '--host', '127.0.0.1', '--port', '6443']);
  const { listening, token, call, put } = await driveStandIn(api);
  for (let i = 0; i < NODES; i++) await put('nodes', nodeObject(node(i)));
  await put('namespaces', namespaceObject('shop', 'enabled'));
  for (const p of pods) await put('pods', podObject({ name: p.name, namespace: 'shop', node: p.node, ip: p.ip, serviceAccount: p.sa, labels: { app: p.app } }));
  for (const s of services) await put('services', serviceObject({ name: s.name, namespace: 'shop', clusterIP: s.clusterIP, ports: [{ name: 'http', port: 80, targetPort: 8080 }], selector: { app: s.app } }));
  // The agent's projected token, as TokenReview answers for it (bound to its node).
  await call({ op: 'token', token: TOKEN, info: { username: `system:serviceaccount:${SYSTEM_NS}:meshlet-agent`, audiences: ['meshlet-ca'], extra: { 'authentication.kubernetes.io/node-name': [node(0)] } } });
  await writeFile(join(dir, 'kubeconfig'), standInKubeConfig(listening, token));

  await sh(process.execPath, [CLI, 'ca', 'init', '--out', join(dir, 'ca'), '--trust-domain', 'cluster.local']);
  await writeFile(join(dir, 'bundle.pem'), readFileSync(join(dir, 'ca', 'trust-bundle.pem')));
  if (MODES.includes('file')) await measure('workloads file', ['--ca-dir', join(dir, 'ca'), '--tokens', join(dir, 'tokens.yaml'), '--workloads', join(dir, 'w.yaml')],
    ['--workloads', join(dir, 'w.yaml')]);
  if (MODES.includes('kubernetes')) await measure('Kubernetes API', ['--kubernetes', '--kubeconfig', join(dir, 'kubeconfig'), '--namespace', SYSTEM_NS],
    ['--kubeconfig', join(dir, 'kubeconfig')],
    // The root the CA made in its Secret on first start, as the agents mount it from the ConfigMap.
    async () => {
      const cm = await call({ op: 'get', resource: 'configmaps', namespace: SYSTEM_NS, name: 'meshlet-trust-bundle' }) as { data: Record<string, string> } | undefined;
      if (!cm) throw new Error('the CA published no trust bundle');
      await writeFile(join(dir, 'bundle.pem'), cm.data['trust-bundle.pem']!);
    });
} finally {
  api?.kill('SIGTERM');
  await runCommand('ip', ['netns', 'del', ns]);
  await rm(dir, { recursive: true, force: true });
}
