// Nodes and pods as network namespaces, for the demo and the end-to-end tests.
//
//   underlay ns (bridge br0) ── eth0 of each node ns (10.240.0.<10+i>/24, ip_forward on)
//   node ns ── veth p<k> (10.241.<i>.1/32) ── eth0 of pod ns (10.241.<i>.<k+10>/32, default via node)
//
// Pods are wired like a point-to-point CNI: every pod is a /32 behind its node, nodes route each
// other's pod ranges over the underlay. A dual-stack topology (`create({ ipv6: true })`) adds the
// same over IPv6: fd00:240::<10+i>/64 per node, fd00:241:<i>::<k+10>/128 per pod behind
// fd00:241:<i>::1, without duplicate address detection (addresses are usable at once). Every
// namespace name starts with a per-run prefix that embeds the creating PID, so parallel runs never
// collide and a later run can reap a crashed run's leftovers.
import { type ChildProcess, execFileSync, spawn, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { PrerequisiteError } from '../errors.ts';
import { type CommandResult, hasNetAdmin, runCommand } from '../capture/exec.ts';

const PREFIX_ROOT = 'mlt';
const UNDERLAY_NET = '10.240.0';
const POD_NET = '10.241';
const UNDERLAY_NET6 = 'fd00:240';
const POD_NET6 = 'fd00:241';

/** The pod bridge of a bridge node (the name the bridge CNI uses). */
export const BRIDGE = 'cni0';

export interface NodeNs {
  name: string;
  ns: string;
  index: number;
  ip: string;
  podCidr: string;
  /** Dual-stack topologies: the node's IPv6 address and its pods' IPv6 range. */
  ip6?: string;
  podCidr6?: string;
  /** Interface facing the underlay (where inter-node packets can be captured). */
  underlayIf: string;
  /**
   * The node's pods hang off one bridge (`cni0`, the gateway's address on it), as with the bridge
   * CNI, flannel or kubenet; otherwise each pod has a veth and a /32 route of its own.
   */
  bridge?: boolean;
  pods: PodNs[];
}

export interface PodNs {
  name: string;
  ns: string;
  ip: string;
  /** Dual-stack topologies: the pod's IPv6 address. */
  ip6?: string;
  node: NodeNs;
  /** The node's end of the pod's veth (`p<k>`): where a CNI enforces the pod's NetworkPolicy. */
  hostIf: string;
}

async function must(cmd: string, args: string[], input?: string): Promise<string> {
  const r = await runCommand(cmd, args, input);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}

/** Fails with a clear message when this machine cannot build namespaces. */
export async function assertNetnsPrerequisites(): Promise<void> {
  if (process.platform !== 'linux') throw new PrerequisiteError('network namespaces need Linux');
  if (!hasNetAdmin()) throw new PrerequisiteError('building network namespaces needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN)');
  for (const [tool, pkg] of [['ip', 'iproute2'], ['iptables-restore', 'iptables'], ['ipset', 'ipset']] as const) {
    const r = await runCommand('sh', ['-c', `command -v ${tool}`]);
    if (r.code !== 0) throw new PrerequisiteError(`${tool} is not installed (apt-get install ${pkg})`);
  }
}

/** Deletes namespaces left by runs whose process is gone. */
export async function reapStaleNamespaces(): Promise<string[]> {
  const list = await runCommand('ip', ['netns', 'list']);
  const reaped: string[] = [];
  for (const line of list.stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = new RegExp(`^${PREFIX_ROOT}-([0-9a-z]+)-`).exec(name);
    if (!m) continue;
    const pid = parseInt(m[1] as string, 36);
    if (isAlive(pid)) continue;
    // Processes of the dead run (an agent, say) would otherwise outlive their namespace's name.
    killProcessesIn(name);
    await runCommand('ip', ['netns', 'delete', name]);
    reaped.push(name);
  }
  return reaped;
}

/**
 * SIGKILLs everything running inside a namespace. Deleting a namespace only removes its name: a
 * process still inside keeps it (and its ports, rules and CPU) alive where nobody can find it.
 */
function killProcessesIn(ns: string): void {
  let pids: string;
  try {
    pids = execFileSync('ip', ['netns', 'pids', ns], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
  } catch {
    return; // namespace already gone
  }
  for (const pid of pids.split('\n').filter(Boolean)) {
    try { process.kill(Number(pid), 'SIGKILL'); } catch { /* already gone */ }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Live topologies of this process: a signal tears them all down before the process goes. */
const live = new Set<Topology>();
let signalsHooked = false;

function hookSignals(): void {
  if (signalsHooked) return;
  signalsHooked = true;
  // A SIGTERM or Ctrl-C would otherwise end the process without 'exit' handlers, leaving agents
  // running in namespaces nobody can find any more.
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(signal, () => {
      for (const topo of live) topo.destroySync();
      process.exit(code);
    });
  }
}

export class Topology {
  readonly prefix: string;
  readonly nodes: NodeNs[] = [];
  readonly #children = new Set<ChildProcess>();
  readonly #namespaces: string[] = [];
  readonly underlay: string;
  /** Whether nodes and pods also get IPv6 addresses and routes. */
  readonly ipv6: boolean;
  #destroyed = false;
  readonly #exitHook = () => this.destroySync();

  private constructor(ipv6: boolean) {
    this.ipv6 = ipv6;
    this.prefix = `${PREFIX_ROOT}-${process.pid.toString(36)}-${randomBytes(2).toString('hex')}`;
    this.underlay = `${this.prefix}-net`;
    // Even an uncaught exception must not leave namespaces behind.
    process.once('exit', this.#exitHook);
    live.add(this);
    hookSignals();
  }

  static async create(opts: { ipv6?: boolean } = {}): Promise<Topology> {
    await assertNetnsPrerequisites();
    await reapStaleNamespaces();
    const topo = new Topology(opts.ipv6 ?? false);
    try {
      await topo.#addNamespace(topo.underlay);
      await must('ip', ['-n', topo.underlay, 'link', 'add', 'br0', 'type', 'bridge']);
      await must('ip', ['-n', topo.underlay, 'link', 'set', 'br0', 'up']);
    } catch (err) {
      await topo.destroy();
      throw err;
    }
    return topo;
  }

  async #addNamespace(ns: string): Promise<void> {
    await must('ip', ['netns', 'add', ns]);
    this.#namespaces.push(ns);
    await must('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    // Interfaces created from now on skip duplicate address detection: their link-local addresses
    // are not tentative for a second or two, so neighbour discovery works at once.
    if (this.ipv6) await this.sysctl(ns, 'net.ipv6.conf.default.accept_dad', '0');
  }

  async sysctl(ns: string, key: string, value: string): Promise<void> {
    await must('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `${key}=${value}`]);
  }

  async addNode(name: string, opts: { bridge?: boolean } = {}): Promise<NodeNs> {
    const index = this.nodes.length + 1;
    const ns = `${this.prefix}-${name}`;
    const node: NodeNs = {
      name, ns, index, ip: `${UNDERLAY_NET}.${10 + index}`, podCidr: `${POD_NET}.${index}.0/24`, underlayIf: 'eth0', pods: [],
      ...(opts.bridge ? { bridge: true } : {}),
    };
    await this.#addNamespace(ns);
    await this.sysctl(ns, 'net.ipv4.ip_forward', '1');
    await this.sysctl(ns, 'net.ipv4.conf.all.rp_filter', '0');
    await this.sysctl(ns, 'net.ipv4.conf.default.rp_filter', '0');
    const port = `n${index}`;
    await must('ip', ['-n', this.underlay, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await must('ip', ['-n', this.underlay, 'link', 'set', port, 'master', 'br0', 'up']);
    await must('ip', ['-n', ns, 'addr', 'add', `${node.ip}/24`, 'dev', 'eth0']);
    await must('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    for (const other of this.nodes) {
      await must('ip', ['-n', ns, 'route', 'add', other.podCidr, 'via', other.ip]);
      await must('ip', ['-n', other.ns, 'route', 'add', node.podCidr, 'via', node.ip]);
    }
    if (this.ipv6) await this.#addNodeIpv6(node);
    if (node.bridge) {
      if (this.ipv6) throw new Error('bridge nodes are IPv4 only');
      await must('ip', ['-n', ns, 'link', 'add', BRIDGE, 'type', 'bridge']);
      await must('ip', ['-n', ns, 'addr', 'add', `${POD_NET}.${index}.1/24`, 'dev', BRIDGE]);
      await must('ip', ['-n', ns, 'link', 'set', BRIDGE, 'up']);
      await this.sysctl(ns, `net.ipv4.conf.${BRIDGE}.rp_filter`, '0');
    }
    this.nodes.push(node);
    return node;
  }

  async #addNodeIpv6(node: NodeNs): Promise<void> {
    node.ip6 = `${UNDERLAY_NET6}::${10 + node.index}`;
    node.podCidr6 = `${POD_NET6}:${node.index}::/64`;
    await this.sysctl(node.ns, 'net.ipv6.conf.all.forwarding', '1');
    await must('ip', ['-n', node.ns, '-6', 'addr', 'add', `${node.ip6}/64`, 'dev', 'eth0', 'nodad']);
    for (const other of this.nodes) {
      await must('ip', ['-n', node.ns, '-6', 'route', 'add', other.podCidr6 as string, 'via', other.ip6 as string]);
      await must('ip', ['-n', other.ns, '-6', 'route', 'add', node.podCidr6, 'via', node.ip6]);
    }
  }

  async addPod(node: NodeNs, name: string): Promise<PodNs> {
    const k = node.pods.length + 1;
    const ns = `${this.prefix}-${node.name}-${name}`;
    const gateway = `${POD_NET}.${node.index}.1`;
    const hostIf = `p${k}`;
    const pod: PodNs = { name, ns, ip: `${POD_NET}.${node.index}.${10 + k}`, node, hostIf };
    await this.#addNamespace(ns);
    await must('ip', ['-n', node.ns, 'link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    if (node.bridge) {
      // A port of the node's bridge: one L2 segment for all of the node's pods.
      await must('ip', ['-n', node.ns, 'link', 'set', hostIf, 'master', BRIDGE, 'up']);
      await must('ip', ['-n', ns, 'addr', 'add', `${pod.ip}/24`, 'dev', 'eth0']);
      await must('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      await must('ip', ['-n', ns, 'route', 'add', 'default', 'via', gateway, 'dev', 'eth0']);
      node.pods.push(pod);
      return pod;
    }
    // The node side needs an address: REDIRECT rewrites the destination to the receiving interface's
    // primary address, and drops packets arriving on an interface without one.
    await must('ip', ['-n', node.ns, 'addr', 'add', `${gateway}/32`, 'dev', hostIf]);
    await must('ip', ['-n', node.ns, 'link', 'set', hostIf, 'up']);
    await must('ip', ['-n', node.ns, 'route', 'add', `${pod.ip}/32`, 'dev', hostIf]);
    await this.sysctl(node.ns, `net.ipv4.conf.${hostIf}.rp_filter`, '0');
    await must('ip', ['-n', ns, 'addr', 'add', `${pod.ip}/32`, 'dev', 'eth0']);
    await must('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    await must('ip', ['-n', ns, 'route', 'add', gateway, 'dev', 'eth0', 'scope', 'link']);
    await must('ip', ['-n', ns, 'route', 'add', 'default', 'via', gateway, 'dev', 'eth0']);
    if (this.ipv6) {
      const gateway6 = `${POD_NET6}:${node.index}::1`;
      pod.ip6 = `${POD_NET6}:${node.index}::${10 + k}`;
      // The gateway address on every pod's link, as the IPv4 one: a CNI's point-to-point wiring.
      await must('ip', ['-n', node.ns, '-6', 'addr', 'add', `${gateway6}/128`, 'dev', hostIf, 'nodad']);
      await must('ip', ['-n', node.ns, '-6', 'route', 'add', `${pod.ip6}/128`, 'dev', hostIf]);
      await must('ip', ['-n', ns, '-6', 'addr', 'add', `${pod.ip6}/128`, 'dev', 'eth0', 'nodad']);
      await must('ip', ['-n', ns, '-6', 'route', 'add', gateway6, 'dev', 'eth0']);
      await must('ip', ['-n', ns, '-6', 'route', 'add', 'default', 'via', gateway6, 'dev', 'eth0']);
    }
    node.pods.push(pod);
    return pod;
  }

  /** Runs a command inside a namespace and waits for it. */
  exec(ns: string, cmd: string, args: string[], input?: string): Promise<CommandResult> {
    return runCommand('ip', ['netns', 'exec', ns, cmd, ...args], input);
  }

  /** Starts a long-running process inside a namespace; destroy() kills it if still running. */
  spawn(ns: string, cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.#children.add(child);
    child.once('exit', () => this.#children.delete(child));
    return child;
  }

  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    live.delete(this);
    process.off('exit', this.#exitHook);
    await Promise.all([...this.#children].map((c) => new Promise<void>((resolve) => {
      if (c.exitCode !== null || c.signalCode !== null) { resolve(); return; }
      c.once('exit', () => resolve());
      c.kill('SIGKILL');
    })));
    for (const ns of [...this.#namespaces].reverse()) {
      // Kill anything else still running inside (a server the child forked, say) before deleting.
      killProcessesIn(ns);
      await runCommand('ip', ['netns', 'delete', ns]);
    }
  }

  /** Last resort on process exit: synchronous, best effort. */
  destroySync(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    live.delete(this);
    for (const c of this.#children) c.kill('SIGKILL');
    for (const ns of [...this.#namespaces].reverse()) {
      killProcessesIn(ns);
      try { execFileSync('ip', ['netns', 'delete', ns], { stdio: 'ignore' }); } catch { /* best effort */ }
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}
