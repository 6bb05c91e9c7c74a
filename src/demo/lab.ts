// A whole local mesh: namespaces for nodes and pods, a shared root CA, a workloads file, capture
// installed by the real `meshlet init` in each node, and one real agent process per node.
// The demo drives it; the end-to-end tests build on it.
import type { ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync, type WriteStream } from 'node:fs';
import { mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { runCommand } from '../capture/exec.ts';
import { defaultCaptureSettings, parseIpsetMembers } from '../capture/rules.ts';
import { type NodeNs, type PodNs, Topology } from '../netns/topology.ts';
import { readPcap, type TcpSegment } from '../netns/pcap.ts';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
export const CLI = join(ROOT, 'src/cli.ts');
export const PEER = join(ROOT, 'src/demo/peer.ts');

export interface PodSpec {
  name: string;
  namespace?: string;
  serviceAccount?: string;
  /** Whether the agent captures it (default true). */
  captured?: boolean;
  /** Whether the workloads file lists it at all (default true). */
  registered?: boolean;
}

export interface LabSpec {
  trustDomain?: string;
  nodes: Array<{ name: string; pods: PodSpec[] }>;
  certTtl?: string;
  agentArgs?: string[];
}

export interface AgentProcess {
  node: NodeNs;
  child: ChildProcess;
  logFile: string;
  exited: Promise<number | null>;
}

export class MeshLab {
  readonly topo: Topology;
  readonly dir: string;
  readonly spec: LabSpec;
  readonly pods = new Map<string, PodNs & { spec: PodSpec }>();
  readonly agents = new Map<string, AgentProcess>();
  readonly servers: ChildProcess[] = [];
  #logs: WriteStream[] = [];

  private constructor(topo: Topology, dir: string, spec: LabSpec) {
    this.topo = topo;
    this.dir = dir;
    this.spec = spec;
  }

  get workloadsFile(): string { return join(this.dir, 'workloads.yaml'); }
  get caDir(): string { return join(this.dir, 'ca'); }

  /** Builds namespaces, the CA and the workloads file; agents are started separately. */
  static async create(spec: LabSpec): Promise<MeshLab> {
    const topo = await Topology.create();
    const dir = await mkdtemp(join(tmpdir(), `${topo.prefix}-`));
    const lab = new MeshLab(topo, dir, spec);
    try {
      for (const n of spec.nodes) {
        const node = await topo.addNode(n.name);
        for (const p of n.pods) {
          const pod = await topo.addPod(node, p.name);
          lab.pods.set(p.name, { ...pod, spec: p });
        }
      }
      await lab.writeWorkloads();
      await lab.meshlet(['ca', 'init', '--out', lab.caDir, '--trust-domain', lab.trustDomain]);
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
    return {
      trustDomain: this.trustDomain,
      nodes: this.topo.nodes.map((n) => ({ name: n.name, ip: n.ip })),
      workloads: [...this.pods.values()].filter((p) => p.spec.registered !== false && filter(p.spec)).map((p) => ({
        name: p.name,
        namespace: p.spec.namespace ?? 'default',
        serviceAccount: p.spec.serviceAccount ?? p.name,
        ip: p.ip,
        node: p.node.name,
        captured: p.spec.captured ?? true,
      })),
    };
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

  async initCapture(node: NodeNs): Promise<void> {
    await this.meshlet(['init'], node.ns);
  }

  async startAgent(node: NodeNs, extraArgs: string[] = []): Promise<AgentProcess> {
    const logFile = join(this.dir, `agent-${node.name}-${Date.now()}.log`);
    const log = createWriteStream(logFile);
    this.#logs.push(log);
    const child = this.topo.spawn(node.ns, process.execPath, [
      CLI, 'agent', '--node', node.name, '--workloads', this.workloadsFile, '--ca-dir', this.caDir,
      '--workloads-poll', '100ms', '--cert-ttl', this.spec.certTtl ?? '1h', ...(this.spec.agentArgs ?? []), ...extraArgs,
    ]);
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    const exited = new Promise<number | null>((res) => child.once('exit', (code) => res(code)));
    const agent: AgentProcess = { node, child, logFile, exited };
    this.agents.set(node.name, agent);
    return agent;
  }

  /** Polls the agent's readiness endpoint from inside its node namespace. */
  async waitReady(node: NodeNs, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < deadline) {
      const agent = this.agents.get(node.name);
      if (agent && agent.child.exitCode !== null) {
        throw new Error(`agent on ${node.name} exited with ${agent.child.exitCode}:\n${await readFile(agent.logFile, 'utf8')}`);
      }
      const r = await this.topo.exec(node.ns, process.execPath, [PEER, 'get', '--url', 'http://127.0.0.1:15021/healthz/ready']);
      if (r.code === 0) return;
      last = r.stdout || r.stderr;
      await new Promise((res) => setTimeout(res, 150));
    }
    throw new Error(`agent on ${node.name} not ready after ${timeoutMs} ms: ${last}`);
  }

  /** Installs capture and starts a ready agent on every node. */
  async startMesh(): Promise<void> {
    for (const node of this.topo.nodes) await this.initCapture(node);
    for (const node of this.topo.nodes) await this.startAgent(node);
    await Promise.all(this.topo.nodes.map((n) => this.waitReady(n)));
  }

  async configDump(node: NodeNs): Promise<any> {
    const r = await this.topo.exec(node.ns, process.execPath, [PEER, 'get', '--url', 'http://127.0.0.1:15000/config_dump']);
    if (r.code !== 0) throw new Error(`config_dump on ${node.name} failed: ${r.stderr || r.stdout}`);
    return JSON.parse(r.stdout);
  }

  /** Starts the peer server in a pod and waits until it listens. */
  async startServer(podName: string, port: number): Promise<ChildProcess> {
    const pod = this.pod(podName);
    const child = this.topo.spawn(pod.ns, process.execPath, [PEER, 'serve', '--port', String(port)]);
    this.servers.push(child);
    await new Promise<void>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`server in ${podName} did not start`)), 10_000);
      child.stdout?.once('data', () => { clearTimeout(timer); res(); });
      child.once('exit', (code) => { clearTimeout(timer); rej(new Error(`server in ${podName} exited ${code}`)); });
    });
    return child;
  }

  /** Runs the peer client in a pod against host:port; returns its parsed JSON report. */
  async client(podName: string, opts: { host: string; port: number; bytes?: number; connections?: number; mode?: 'echo' | 'halfclose' | 'hold'; timeoutMs?: number; pattern?: string }): Promise<ClientReport> {
    const pod = this.pod(podName);
    const r = await this.topo.exec(pod.ns, process.execPath, [PEER, 'client', '--host', opts.host, '--port', String(opts.port),
      '--bytes', String(opts.bytes ?? 1024), '--connections', String(opts.connections ?? 1), '--mode', opts.mode ?? 'echo',
      '--timeout', String(opts.timeoutMs ?? 60_000), ...(opts.pattern ? ['--pattern', opts.pattern] : [])]);
    if (r.code !== 0) throw new Error(`client in ${podName} failed (${r.code}): ${r.stderr}`);
    return JSON.parse(r.stdout) as ClientReport;
  }

  /** Starts tcpdump on a node's underlay interface; stop() returns the TCP segments it saw. */
  async startPacketCapture(node: NodeNs): Promise<{ stop(): Promise<TcpSegment[]> }> {
    const file = join(this.dir, `capture-${node.name}-${Date.now()}.pcap`);
    const child = this.topo.spawn(node.ns, 'tcpdump', ['-i', node.underlayIf, '-n', '-U', '-s', '0', '-w', file, 'tcp']);
    // tcpdump says "listening on ..." on stderr once the capture is armed.
    await new Promise<void>((res, rej) => {
      const timer = setTimeout(() => rej(new Error('tcpdump did not start')), 10_000);
      child.stderr?.on('data', (d: Buffer) => { if (d.toString().includes('listening')) { clearTimeout(timer); res(); } });
      child.once('exit', (code) => { clearTimeout(timer); rej(new Error(`tcpdump exited ${code} (apt-get install tcpdump)`)); });
    });
    return {
      stop: async () => {
        const exited = new Promise((res) => child.once('exit', res));
        child.kill('SIGINT');
        await exited;
        return readPcap(await readFile(file));
      },
    };
  }

  /** Every JSON log line the agent on `nodeName` has written so far. */
  async agentLog(nodeName: string): Promise<Array<Record<string, any>>> {
    const agent = this.agents.get(nodeName);
    if (!agent) return [];
    const text = await readFile(agent.logFile, 'utf8');
    return text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, any>);
  }

  /** Access-log lines (parsed JSON) an agent has written so far. */
  async accessLog(nodeName: string): Promise<Array<Record<string, any>>> {
    return (await this.agentLog(nodeName)).filter((l) => l.scope === 'access');
  }

  /** Members of the captured-pods ipset in a node's namespace. */
  async ipsetMembers(node: NodeNs, set = defaultCaptureSettings.ipset): Promise<Set<string>> {
    const r = await this.topo.exec(node.ns, 'ipset', ['save', set]);
    if (r.code !== 0) throw new Error(`ipset save ${set} in ${node.name}: ${r.stderr.trim()}`);
    return parseIpsetMembers(set, r.stdout);
  }

  async stopAgent(nodeName: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const agent = this.agents.get(nodeName);
    if (!agent) return null;
    if (agent.child.exitCode === null && agent.child.signalCode === null) {
      // `ip netns exec` execs the command, so the child PID is the agent itself.
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

/** utime + stime of a process in seconds (fields 14 and 15 of /proc/PID/stat, 100 ticks a second). */
export function processCpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Resident set size of a process in MiB. */
export function processRssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

export interface ClientReport {
  ok: boolean;
  results: Array<{ ok: boolean; sent: number; received: number; sentSha: string; receivedSha: string; ms: number; error?: string; reply?: string }>;
}
