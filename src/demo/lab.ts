// A whole local mesh: namespaces for nodes and pods, a shared root CA, a workloads file, capture
// installed by the real `meshlet init` in each node, and one real agent process per node.
// The demo drives it; the end-to-end tests build on it.
import type { ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { copyFile, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { runCommand } from '../capture/exec.ts';
import { parseIpsetMembers } from '../capture/ipset.ts';
import { defaultCaptureSettings } from '../capture/rules.ts';
import { NFT_TABLE, parseNftSetJson } from '../capture/nftables.ts';
import { type NodeNs, type PodNs, Topology } from '../netns/topology.ts';
import type { TcpSegment } from '../netns/pcap.ts';
import { capturing, startPacketCapture } from '../netns/packet-capture.ts';
import { readProcessLog } from './process-logs.ts';
import { PORTS } from '../ports.ts';
import { AGENT_NODE_FLAGS, type AgentProcess, CLI, type ClientReport, type LabSpec, type MeshletRole, type PodSpec, processRunner, workloadsDocument } from './lab-spec.ts';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
export { AGENT_NODE_FLAGS, CLI } from './lab-spec.ts';
export const PEER = join(ROOT, 'src/demo/peer.ts');
/** The benchmarks' load generator and HTTP server (bench/load.ts). */
const LOAD_SCRIPT = join(ROOT, 'bench/load.ts');

export class MeshLab {
  readonly topo: Topology;
  readonly dir: string;
  readonly spec: LabSpec;
  readonly pods = new Map<string, PodNs & { spec: PodSpec }>();
  readonly agents = new Map<string, AgentProcess>();
  /** Agents in sidecar mode, by pod name. */
  readonly sidecars = new Map<string, AgentProcess>();
  readonly servers: ChildProcess[] = [];
  /** The CA service's namespace (identity 'service'), on the underlay like a node. */
  caNode: NodeNs | undefined;
  /** The API stand-in's namespace (spec.apiNode). */
  apiNode: NodeNs | undefined;
  ca: { child: ChildProcess; logFile: string; exited: Promise<number | null> } | undefined;
  readonly tokens = new Map<string, string>();
  #logs: WriteStream[] = [];

  private constructor(topo: Topology, dir: string, spec: LabSpec) {
    this.topo = topo;
    this.dir = dir;
    this.spec = spec;
  }

  get workloadsFile(): string { return join(this.dir, 'workloads.yaml'); }
  get caDir(): string { return join(this.dir, 'ca'); }
  get tokensFile(): string { return join(this.dir, 'tokens.yaml'); }
  /** The roots agents are given to verify the CA service (a ConfigMap in a cluster). */
  get trustBundleFile(): string { return join(this.dir, 'trust-bundle.pem'); }
  tokenFile(node: string): string { return join(this.dir, `token-${node}`); }
  get caUrl(): string { return `https://${this.caNode?.ip}:${PORTS.ca}`; }
  /** The mesh's nodes (the CA's namespace is not one). */
  get meshNodes(): NodeNs[] { return this.topo.nodes.filter((n) => n !== this.caNode && n !== this.apiNode); }

  /** Builds namespaces, the CA and the workloads file; agents are started separately. */
  static async create(spec: LabSpec): Promise<MeshLab> {
    const topo = await Topology.create({ ipv6: spec.dualStack ?? false });
    const dir = await mkdtemp(join(tmpdir(), `${topo.prefix}-`));
    const lab = new MeshLab(topo, dir, spec);
    try {
      for (const n of spec.nodes) {
        const node = await topo.addNode(n.name, { bridge: n.bridge ?? false });
        for (const p of n.pods) {
          const pod = await topo.addPod(node, p.name);
          lab.pods.set(p.name, { ...pod, spec: p });
        }
      }
      if (spec.apiNode) lab.apiNode = await topo.addNode('api');
      if (spec.identity === 'service') {
        lab.caNode = await topo.addNode('ca');
        for (const n of spec.nodes) lab.tokens.set(n.name, randomBytes(24).toString('base64url'));
        await writeFile(lab.tokensFile, stringify({ tokens: [...lab.tokens].map(([node, token]) => ({ node, token })) }));
        for (const [node, token] of lab.tokens) await writeFile(lab.tokenFile(node), `${token}\n`, { mode: 0o600 });
      }
      await lab.writeWorkloads();
      await lab.meshlet(['ca', 'init', '--out', lab.caDir, '--trust-domain', lab.trustDomain, ...(spec.keyAlgorithm ? ['--key-algorithm', spec.keyAlgorithm] : [])]);
      await copyFile(join(lab.caDir, 'trust-bundle.pem'), lab.trustBundleFile);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    return lab;
  }

  get trustDomain(): string { return this.spec.trustDomain ?? 'cluster.local'; }

  pod(name: string): PodNs & { spec: PodSpec } {
    const p = this.pods.get(name);
    if (!p) throw new Error(`no pod ${name} in this lab`);
    return p;
  }

  node(name: string): NodeNs {
    const n = this.topo.nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no node ${name} in this lab`);
    return n;
  }

  workloadsDocument(filter: (p: PodSpec) => boolean = () => true): object {
    return workloadsDocument(this.trustDomain, this.meshNodes, [...this.pods.values()].filter((p) => filter(p.spec)), this.spec.services);
  }

  async writeWorkloads(doc: object = this.workloadsDocument()): Promise<void> {
    // Write-then-rename so the agent never reads half a file.
    const tmp = `${this.workloadsFile}.tmp`;
    await writeFile(tmp, stringify(doc));
    await rename(tmp, this.workloadsFile);
  }

  /** Runs the meshlet CLI in the root namespace or in a node namespace. */
  async meshlet(args: string[], ns?: string): Promise<string> {
    const r = ns
      ? await this.topo.exec(ns, process.execPath, [CLI, ...args])
      : await runCommand(process.execPath, [CLI, ...args]);
    if (r.code !== 0) throw new Error(`meshlet ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** `--capture-backend` for init and agents, when the lab uses nftables. */
  get captureArgs(): string[] {
    return this.spec.captureBackend === 'nftables' ? ['--capture-backend', 'nftables'] : [];
  }

  async initCapture(node: NodeNs): Promise<void> {
    const { cmd, args } = this.#command('init', ['init', ...this.captureArgs]);
    const r = await this.topo.exec(node.ns, cmd, args);
    if (r.code !== 0) throw new Error(`meshlet init on ${node.name} failed (${r.code}): ${r.stderr.trim()}`);
  }

  #command(role: MeshletRole, args: string[]): { cmd: string; args: string[] } {
    return (this.spec.runner ?? processRunner).command(role, args, this.dir);
  }

  /**
   * Starts an agent; `identity` overrides the lab's (the benchmark compares both on one lab) and
   * `workloads` replaces the workloads-file flags (e.g. with --kubeconfig).
   */
  async startAgent(node: NodeNs, extraArgs: string[] = [], opts: { identity?: 'local' | 'service'; workloads?: string[] } = {}): Promise<AgentProcess> {
    const identity = (opts.identity ?? this.spec.identity) === 'service'
      ? ['--ca-url', this.caUrl, '--token-file', this.tokenFile(node.name), '--trust-bundle', this.trustBundleFile,
        '--bundle-poll', this.spec.bundlePoll ?? '500ms']
      : ['--ca-dir', this.caDir, '--cert-ttl', this.spec.certTtl ?? '1h'];
    const agent: AgentProcess = { node, ...this.#spawnLogged(node.ns, `agent-${node.name}`, this.#command('agent', [
      'agent', '--node', node.name, ...(opts.workloads ?? ['--workloads', this.workloadsFile, '--workloads-poll', '100ms']), ...identity,
      ...this.captureArgs, '--workers', String(this.spec.workers ?? 2), '--min-workers', String(this.spec.minWorkers ?? this.spec.workers ?? 2), ...(this.spec.keyAlgorithm ? ['--key-algorithm', this.spec.keyAlgorithm] : []),
      ...(this.spec.agentArgs ?? []), ...extraArgs,
    ])) };
    this.agents.set(node.name, agent);
    return agent;
  }

  /**
   * Sidecar mode: `meshlet init --sidecar` in the pod's namespace (with CAP_NET_ADMIN, as an init
   * container), then an agent there that serves the pod alone, run as Istio runs its sidecars: with
   * the proxy group id (its own connections are not captured again) and without CAP_NET_ADMIN.
   */
  async startSidecar(podName: string, extraArgs: string[] = []): Promise<AgentProcess> {
    const pod = this.pod(podName);
    await this.meshlet(['init', '--sidecar'], pod.ns);
    const agent: AgentProcess = { node: pod.node, pod, ...this.#spawnLogged(pod.ns, `sidecar-${pod.name}`, { cmd: 'setpriv', args: [
      '--regid', String(defaultCaptureSettings.proxyGid), '--clear-groups', '--bounding-set', '-net_admin', '--', process.execPath, ...AGENT_NODE_FLAGS,
      CLI, 'agent', '--node', pod.node.name, '--sidecar', `${pod.spec.namespace ?? 'default'}/${pod.name}`,
      '--workloads', this.workloadsFile, '--workloads-poll', '100ms', '--ca-dir', this.caDir, '--cert-ttl', this.spec.certTtl ?? '1h',
      ...(this.spec.agentArgs ?? []), ...extraArgs,
    ] }) };
    this.sidecars.set(pod.name, agent);
    return agent;
  }

  /** Polls an agent's readiness endpoint from inside its namespace (a node's, or a pod's for a sidecar). */
  async waitReady(where: NodeNs | PodNs, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const what = 'node' in where ? `sidecar in ${where.name}` : `agent on ${where.name}`;
    let last = '';
    while (Date.now() < deadline) {
      const agent = 'node' in where ? this.sidecars.get(where.name) : this.agents.get(where.name);
      if (agent && agent.child.exitCode !== null) {
        throw new Error(`${what} exited with ${agent.child.exitCode}:\n${await readFile(agent.logFile, 'utf8')}`);
      }
      const r = await this.topo.exec(where.ns, process.execPath, [PEER, 'get', '--url', `http://127.0.0.1:${PORTS.readiness}/healthz/ready`]);
      if (r.code === 0) return;
      last = r.stdout || r.stderr;
      await new Promise((res) => setTimeout(res, 150));
    }
    throw new Error(`${what} not ready after ${timeoutMs} ms: ${last}`);
  }

  /** A long-running process in a namespace, its stdout and stderr in a log file of the lab's. */
  #spawnLogged(ns: string, name: string, { cmd, args }: { cmd: string; args: string[] }): Pick<AgentProcess, 'child' | 'logFile' | 'exited'> {
    const logFile = join(this.dir, `${name}-${Date.now()}.log`);
    const log = createWriteStream(logFile);
    this.#logs.push(log);
    const child = this.topo.spawn(ns, cmd, args);
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    return { child, logFile, exited };
  }

  /** Installs capture and starts a ready agent on every node (and the CA service first, if used). */
  async startMesh(): Promise<void> {
    if (this.caNode) await this.startCa();
    for (const node of this.meshNodes) await this.initCapture(node);
    for (const node of this.meshNodes) await this.startAgent(node);
    await Promise.all(this.meshNodes.map((n) => this.waitReady(n)));
  }

  /** Starts `meshlet ca serve` in the CA namespace and waits until it listens. */
  async startCa(extraArgs: string[] = []): Promise<void> {
    const caNode = this.caNode;
    if (!caNode) throw new Error('this lab has no CA service (identity: service)');
    const { child, logFile, exited } = this.#spawnLogged(caNode.ns, 'ca', this.#command('ca', [
      'ca', 'serve', '--ca-dir', this.caDir, '--tokens', this.tokensFile, '--workloads', this.workloadsFile,
      '--port', String(PORTS.ca), '--san', caNode.ip, '--reload', '500ms', '--cert-ttl', this.spec.certTtl ?? '1h',
      '--trust-domain', this.trustDomain, ...(this.spec.caArgs ?? []), ...extraArgs,
    ]));
    this.ca = { child, logFile, exited };
    const deadline = Date.now() + 15_000;
    while (!(await this.caLog()).some((l) => l.msg === 'CA listening')) {
      if (child.exitCode !== null) throw new Error(`CA exited with ${child.exitCode}:\n${await readFile(logFile, 'utf8')}`);
      if (Date.now() > deadline) throw new Error(`CA did not start:\n${await readFile(logFile, 'utf8')}`);
      await new Promise((res) => setTimeout(res, 100));
    }
  }

  async stopCa(): Promise<void> {
    const ca = this.ca;
    if (!ca) return;
    if (ca.child.exitCode === null && ca.child.signalCode === null) ca.child.kill('SIGTERM');
    await ca.exited;
  }

  /** Every JSON log line the CA service has written so far. */
  async caLog(): Promise<Array<Record<string, any>>> {
    return this.ca ? readProcessLog(this.ca) : [];
  }

  /** An agent's admin or metrics endpoint, from inside its node namespace: the body, and whether it answered 2xx. */
  async agentHttp(node: Pick<NodeNs, 'name' | 'ns'>, path: string, opts: { port?: number; method?: string } = {}): Promise<{ ok: boolean; body: string }> {
    const r = await this.topo.exec(node.ns, process.execPath, [PEER, 'get', '--url', `http://127.0.0.1:${opts.port ?? PORTS.admin}${path}`, '--method', opts.method ?? 'GET']);
    return { ok: r.code === 0, body: r.stdout };
  }

  /** The agent's Prometheus metrics, as text. */
  async metrics(node: NodeNs): Promise<string> {
    const r = await this.agentHttp(node, '/metrics', { port: PORTS.metrics });
    if (!r.ok) throw new Error(`metrics on ${node.name} failed: ${r.body}`);
    return r.body;
  }

  async configDump(node: Pick<NodeNs, 'name' | 'ns'>): Promise<any> {
    const r = await this.agentHttp(node, '/config_dump');
    if (!r.ok) throw new Error(`config_dump on ${node.name} failed: ${r.body}`);
    return JSON.parse(r.body);
  }

  /** Starts bench/load.ts's HTTP server (1 KB request/response benchmarks) in a pod; resolves once it listens. */
  startHttpServer(podName: string, port: number): Promise<ChildProcess> {
    return this.#startApp(podName, 'HTTP server', [LOAD_SCRIPT, 'http-server', '--port', String(port)]);
  }

  /** Starts the peer server in a pod and waits until it listens. */
  startServer(podName: string, port: number): Promise<ChildProcess> {
    return this.#startApp(podName, 'server', [PEER, 'serve', '--port', String(port)]);
  }

  /** A Node script in a pod that says something on stdout once it listens. */
  async #startApp(podName: string, what: string, args: string[]): Promise<ChildProcess> {
    const child = this.topo.spawn(this.pod(podName).ns, process.execPath, args);
    this.servers.push(child);
    await new Promise<void>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`${what} in ${podName} did not start`)), 10_000);
      child.stdout?.once('data', () => { clearTimeout(timer); res(); });
      child.once('exit', (code) => { clearTimeout(timer); rej(new Error(`${what} in ${podName} exited ${code}`)); });
    });
    return child;
  }

  /** Runs the peer client in a pod against host:port; returns its parsed JSON report. */
  async client(podName: string, opts: { host: string; port: number; bytes?: number; connections?: number; mode?: 'echo' | 'halfclose' | 'hold' | 'whoami'; timeoutMs?: number; pattern?: string; together?: boolean; from?: string }): Promise<ClientReport> {
    const pod = this.pod(podName);
    const r = await this.topo.exec(pod.ns, process.execPath, [PEER, 'client', '--host', opts.host, '--port', String(opts.port),
      '--bytes', String(opts.bytes ?? 1024), '--connections', String(opts.connections ?? 1), '--mode', opts.mode ?? 'echo',
      '--timeout', String(opts.timeoutMs ?? 60_000), ...(opts.pattern ? ['--pattern', opts.pattern] : []), ...(opts.together ? ['--together'] : []), ...(opts.from ? ['--from', opts.from] : [])]);
    if (r.code !== 0) throw new Error(`client in ${podName} failed (${r.code}): ${r.stderr}`);
    return JSON.parse(r.stdout) as ClientReport;
  }

  /** Runs `run` with tcpdump on the node's underlay interface; the segments seen while it ran. */
  capturing<T>(node: NodeNs, run: () => Promise<T>): Promise<{ result: T; segments: TcpSegment[] }> {
    return capturing(this.topo, node, join(this.dir, `capture-${node.name}-${Date.now()}.pcap`), run);
  }

  /** Starts tcpdump on a node's underlay interface; stop() returns the TCP segments it saw. */
  startPacketCapture(node: NodeNs): Promise<{ stop(): Promise<TcpSegment[]> }> {
    return startPacketCapture(this.topo, node, join(this.dir, `capture-${node.name}-${Date.now()}.pcap`));
  }

  /** Every JSON log line the agent on `nodeName` has written so far. */
  async agentLog(nodeName: string): Promise<Array<Record<string, any>>> {
    const agent = this.agents.get(nodeName);
    return agent ? this.processLog(agent) : [];
  }

  /** The log lines of one agent process (during an upgrade a node has two). */
  processLog(agent: AgentProcess): Promise<Array<Record<string, any>>> {
    return readProcessLog(agent);
  }

  /** Access-log lines (parsed JSON) an agent has written so far. */
  async accessLog(nodeName: string): Promise<Array<Record<string, any>>> {
    return (await this.agentLog(nodeName)).filter((l) => l.scope === 'access');
  }

  /** Members of the captured-pods ipset in a node's namespace. */
  async ipsetMembers(node: NodeNs, set = defaultCaptureSettings.ipset): Promise<Set<string>> {
    if (this.spec.captureBackend === 'nftables' && set !== defaultCaptureSettings.ipset6) {
      const r = await this.topo.exec(node.ns, 'nft', ['-j', 'list', 'set', ...NFT_TABLE, set]);
      if (r.code !== 0) throw new Error(`nft list set ${set} in ${node.name}: ${r.stderr.trim()}`);
      return parseNftSetJson(r.stdout);
    }
    const r = await this.topo.exec(node.ns, 'ipset', ['save', set]);
    if (r.code !== 0) throw new Error(`ipset save ${set} in ${node.name}: ${r.stderr.trim()}`);
    return parseIpsetMembers(set, r.stdout);
  }

  async stopAgent(nodeName: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const agent = this.agents.get(nodeName);
    if (!agent) return null;
    if (agent.child.exitCode === null && agent.child.signalCode === null) {
      // The agent itself (`ip netns exec` execs it), or podman, which passes the signal on.
      agent.child.kill(signal);
    }
    return agent.exited;
  }

  async destroy(opts: { keepDir?: boolean } = {}): Promise<void> {
    await this.topo.destroy();
    for (const log of this.#logs) log.end();
    if (!opts.keepDir) await rm(this.dir, { recursive: true, force: true });
  }
}
