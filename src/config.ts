// One configuration, parsed and validated once at the door. Nothing else reads process.env or argv.
import { parseArgs } from 'node:util';
import { isIP } from 'node:net';
import { ConfigError } from './errors.ts';
import { type CaptureSettings, defaultCaptureSettings, SIDECAR_CHAINS } from './capture/rules.ts';

export interface Ports {
  outbound: number;
  inboundPlaintext: number;
  tunnel: number;
  admin: number;
  readiness: number;
  metrics: number;
}

/** Where the agent's workload certificates come from. */
export type IdentityConfig =
  | { mode: 'local'; caDir: string; certTtlMs: number }
  | { mode: 'ca-service'; url: string; tokenFile: string; trustBundleFile: string; bundlePollMs: number; requestTimeoutMs: number };

/** Where the registry comes from: the workloads file (local mode) or the Kubernetes API. */
export type WorkloadsConfig =
  | { kind: 'file'; path: string; pollMs: number }
  | { kind: 'kubernetes'; kubeconfig: string | undefined; trustDomain: string };

export interface AgentConfig {
  nodeName: string;
  /**
   * Set: sidecar mode. The agent runs inside this workload's pod and serves it alone (every other
   * workload is remote, reached through its own sidecar). Kept to measure what the sidecar pattern
   * costs next to one agent per node; capture.mode is 'sidecar' with it.
   */
  sidecar?: { namespace: string; name: string };
  workloads: WorkloadsConfig;
  identity: IdentityConfig;
  ports: Ports;
  adminAddress: string;
  readinessAddress: string;
  metricsAddress: string;
  logLevel: LogLevel;
  connectTimeoutMs: number;
  handshakeTimeoutMs: number;
  drainMs: number;
  /** Prometheus metrics on the metrics port (off: no registry, no listener, no per-connection cost). */
  metrics: boolean;
  /** One access-log line per connection. */
  accessLog: boolean;
  /** Connections the agent holds at most, in all and per source address. */
  maxConnections: number;
  maxConnectionsPerSource: number;
  /**
   * Tunnel-port sockets still in their mTLS handshake: a budget of their own (in all, per source),
   * so unauthenticated sockets never take the connections the node's pods need.
   */
  maxPendingHandshakes: number;
  maxPendingHandshakesPerSource: number;
  /** Tunnel handshakes a second per source (token bucket, burst of twice that). */
  handshakeRate: number;
  /** A tunnel session whose peer has acknowledged nothing of its queued data for this long is reset. */
  tunnelStallTimeoutMs: number;
  /** What the tunnel sockets' send queues may hold together (MiB) before stalled sessions are reset. */
  tunnelQueueBudgetMiB: number;
  /** Relayed connections silent both ways for this long are reset. */
  idleTimeoutMs: number;
  /**
   * Deliveries to local pods come from the source pod's own address (node mode; a sidecar delivers
   * inside the pod). Off: from the node's address, as before.
   */
  preserveSourceIp: boolean;
  /**
   * drop: non-TCP traffic (UDP, SCTP, ...) forwarded to this node's captured pods in STRICT
   * namespaces is dropped, except ICMP and the node's own. allow (default): it reaches them as
   * without a mesh (the mesh carries TCP only).
   */
  nonTcpToStrict: 'allow' | 'drop';
  /**
   * How long a vouched-for pod stays in the probe gate without being re-added: a dead or stalled
   * agent's pods fail kubelet's probes this long after its last refresh (refreshed 4 times per TTL).
   */
  probeGateTtlMs: number;
  /**
   * MiB of old-generation headroom kept above the live heap once the agent is up (heap-headroom.ts:
   * fewer full collections on bulk transfers); 0 leaves V8's own sizing.
   */
  heapHeadroomMiB: number;
  capture: CaptureSettings;
}

/** Where the CA keeps its root and how it authorizes: files (local) or the Kubernetes API. */
export type CaBackend =
  | { kind: 'local'; caDir: string; tokensFile: string; workloadsFile: string }
  | { kind: 'kubernetes'; kubeconfig: string | undefined; namespace: string; agentServiceAccount: string; rootSecret: string; bundleConfigMap: string };

export interface CaServeConfig {
  backend: CaBackend;
  trustDomain: string;
  listenAddress: string;
  port: number;
  certTtlMs: number;
  maxBodyBytes: number;
  ratePerSecond: number;
  burst: number;
  servingNames: string[];
  reloadMs: number;
  logLevel: LogLevel;
}

export interface InitConfig {
  capture: CaptureSettings;
  dryRun: boolean;
  cleanup: boolean;
}

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export const defaults = {
  certTtl: '24h',
  ports: { outbound: 15001, inboundPlaintext: 15006, tunnel: 15008, admin: 15000, readiness: 15021, metrics: 15020 } satisfies Ports,
  adminAddress: '127.0.0.1',
  readinessAddress: '0.0.0.0',
  // Prometheus scrapes from another host; the metrics say nothing an operator may not see.
  metricsAddress: '0.0.0.0',
  logLevel: 'info' as LogLevel,
  connectTimeout: '5s',
  handshakeTimeout: '5s',
  drain: '5s',
  workloadsPoll: '500ms',
  bundlePoll: '30s',
  caRequestTimeout: '10s',
  ca: {
    port: 15012,
    listenAddress: '0.0.0.0',
    trustDomain: 'cluster.local',
    maxBody: 16_384,
    // Per client address: a node with 200 pods gets all its certificates at cold start in one burst.
    rate: 50,
    burst: 200,
    reload: '10s',
    // The names agents use in a cluster (Service meshlet-ca in meshlet-system), and loopback.
    servingNames: 'meshlet-ca,meshlet-ca.meshlet-system,meshlet-ca.meshlet-system.svc,localhost,127.0.0.1',
    namespace: 'meshlet-system',
    agentServiceAccount: 'meshlet-agent',
    rootSecret: 'meshlet-ca-root',
    bundleConfigMap: 'meshlet-trust-bundle',
  },
};

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses durations like 500ms, 20s, 5m, 24h. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * (UNITS[m[2] as string] as number));
}

class Problems {
  readonly list: string[] = [];
  duration(flag: string, value: string, min: number, max: number): number {
    const ms = parseDuration(value);
    if (ms === undefined) this.list.push(`--${flag}: ${JSON.stringify(value)} is not a duration (e.g. 500ms, 20s, 24h)`);
    else if (ms < min || ms > max) this.list.push(`--${flag}: ${value} is outside ${min} ms .. ${max} ms`);
    return ms ?? 0;
  }
  port(flag: string, value: string): number {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < 1 || n > 65535) this.list.push(`--${flag}: ${JSON.stringify(value)} is not a TCP port`);
    return n;
  }
  required(flag: string, value: string | undefined): string {
    if (!value) this.list.push(`--${flag} is required`);
    return value ?? '';
  }
  int(flag: string, value: string, min: number, max: number): number {
    const n = Number(value);
    if (!/^\d+$/.test(value) || n < min || n > max) this.list.push(`--${flag}: ${JSON.stringify(value)} is not a whole number in ${min} .. ${max}`);
    return n;
  }
  ip(flag: string, value: string): string {
    if (!isIP(value)) this.list.push(`--${flag}: ${JSON.stringify(value)} is not an IP address`);
    return value;
  }
  oneOf<T extends string>(flag: string, value: string, allowed: readonly T[]): T {
    if (!(allowed as readonly string[]).includes(value)) this.list.push(`--${flag}: ${JSON.stringify(value)} is not one of ${allowed.join(', ')}`);
    return (allowed as readonly string[]).includes(value) ? value as T : allowed[0] as T;
  }
  onOff(flag: string, value: string): boolean {
    if (value !== 'on' && value !== 'off') this.list.push(`--${flag}: ${JSON.stringify(value)} is not on or off`);
    return value === 'on';
  }
  throwIfAny(): void {
    if (this.list.length > 0) throw new ConfigError(this.list);
  }
}

const captureOptions = {
  'capture-backend': { type: 'string', default: defaultCaptureSettings.backend },
  ipset: { type: 'string', default: defaultCaptureSettings.ipset },
  'destinations-ipset': { type: 'string', default: defaultCaptureSettings.destinationsIpset },
  ipset6: { type: 'string', default: defaultCaptureSettings.ipset6 },
  chain: { type: 'string', default: defaultCaptureSettings.chain },
  'gate-ipset': { type: 'string', default: defaultCaptureSettings.gateIpset },
  'gate-chain': { type: 'string', default: defaultCaptureSettings.gateChain },
  'outbound-port': { type: 'string', default: String(defaults.ports.outbound) },
  'inbound-port': { type: 'string', default: String(defaults.ports.inboundPlaintext) },
  'tunnel-port': { type: 'string', default: String(defaults.ports.tunnel) },
  'proxy-gid': { type: 'string', default: String(defaultCaptureSettings.proxyGid) },
} as const;

/** parseArgs with its errors (unknown flag, missing value) turned into ConfigError. */
function parse<T>(run: () => T): T {
  try {
    return run();
  } catch (err) {
    throw new ConfigError([(err as Error).message]);
  }
}

function captureSettings(v: Record<string, unknown>, p: Problems, mode: CaptureSettings['mode']): CaptureSettings {
  const name = (flag: string, kind: 'set' | 'chain') => {
    const value = String(v[flag]);
    if (kind === 'set' && !/^[A-Za-z0-9_.-]{1,31}$/.test(value)) p.list.push(`--${flag}: ${JSON.stringify(value)} is not a valid set name (1-31 of A-Z a-z 0-9 _ . -)`);
    if (kind === 'chain' && !/^[A-Z0-9_-]{1,28}$/.test(value)) p.list.push(`--${flag}: ${JSON.stringify(value)} is not a valid chain name (1-28 of A-Z 0-9 _ -)`);
    return value;
  };
  const settings = {
    ipset: name('ipset', 'set'), destinationsIpset: name('destinations-ipset', 'set'), ipset6: name('ipset6', 'set'), chain: name('chain', 'chain'), gateIpset: name('gate-ipset', 'set'), gateChain: name('gate-chain', 'chain'),
  };
  // Named chains and sets are flushed, rewritten and (with --cleanup) deleted: never another's.
  const fixed = [defaultCaptureSettings.sourceChain, defaultCaptureSettings.antiSpoofChain, defaultCaptureSettings.forwardChain, defaultCaptureSettings.ipv6Chain, ...Object.values(SIDECAR_CHAINS)];
  for (const [flag, value] of [['chain', settings.chain], ['gate-chain', settings.gateChain]] as const) {
    if (!value.startsWith('MESHLET')) p.list.push(`--${flag}: ${value} is not meshlet's own (it is flushed and deleted with --cleanup): the name must start with MESHLET`);
    else if (fixed.includes(value)) p.list.push(`--${flag}: ${value} is one of meshlet's other chains`);
  }
  if (settings.chain === settings.gateChain) p.list.push(`--chain and --gate-chain must differ (both ${settings.chain})`);
  for (const [flag, value] of [['ipset', settings.ipset], ['destinations-ipset', settings.destinationsIpset], ['ipset6', settings.ipset6], ['gate-ipset', settings.gateIpset]] as const) {
    if (!value.startsWith('meshlet')) p.list.push(`--${flag}: ${value} is not meshlet's own (its members are replaced, and it is destroyed with --cleanup): the name must start with meshlet`);
    else if (value === defaultCaptureSettings.strictIpset) p.list.push(`--${flag}: ${value} is meshlet's STRICT pods set`);
  }
  const sets = [['--ipset', settings.ipset], ['--destinations-ipset', settings.destinationsIpset], ['--gate-ipset', settings.gateIpset], ['--ipset6', settings.ipset6]];
  for (const [i, [flag, value]] of sets.entries()) {
    for (const [other, otherValue] of sets.slice(i + 1)) if (value === otherValue) p.list.push(`${flag} and ${other} must differ (both ${value})`);
  }
  const backend = String(v['capture-backend']);
  if (backend !== 'iptables' && backend !== 'nftables') p.list.push(`--capture-backend: ${JSON.stringify(backend)} is not iptables or nftables`);
  if (mode === 'sidecar' && backend === 'nftables') p.list.push('--sidecar captures with iptables only (--capture-backend nftables is for the node agent)');
  const tunnelPort = p.port('tunnel-port', String(v['tunnel-port']));
  const outboundPort = p.port('outbound-port', String(v['outbound-port']));
  const inboundPlaintextPort = p.port('inbound-port', String(v['inbound-port']));
  // Capture redirects to these and lets the agent's metrics and readiness ports through untouched.
  distinctPorts(p, [['--outbound-port', outboundPort], ['--inbound-port', inboundPlaintextPort], ['--tunnel-port', tunnelPort],
    ['the metrics port', defaults.ports.metrics], ['the readiness port', defaults.ports.readiness]]);
  return {
    mode,
    // Not 0: root's own connections (and the app's, if it runs as root) would escape capture.
    proxyGid: p.int('proxy-gid', String(v['proxy-gid']), 1, 2 ** 31 - 1),
    passPorts: [tunnelPort, defaults.ports.metrics, defaults.ports.readiness],
    sourceChain: defaultCaptureSettings.sourceChain,
    antiSpoofChain: defaultCaptureSettings.antiSpoofChain,
    strictIpset: defaultCaptureSettings.strictIpset,
    forwardChain: defaultCaptureSettings.forwardChain,
    ipv6Chain: defaultCaptureSettings.ipv6Chain,
    backend: backend === 'nftables' ? 'nftables' : 'iptables',
    ...settings,
    outboundPort,
    inboundPlaintextPort,
    tunnelPort,
  };
}

/** Each port once: two listeners, or a redirect onto another listener, cannot share one. */
function distinctPorts(p: Problems, ports: Array<[string, number]>): void {
  for (const [i, [what, port]] of ports.entries()) {
    const clash = ports.slice(0, i).find(([, other]) => other === port);
    if (clash && port > 0) p.list.push(`${what} ${port} is already ${clash[0]}'s`);
  }
}

/** `--sidecar NAMESPACE/NAME`: the one workload a sidecar-mode agent serves. */
function sidecarWorkload(value: string | undefined, p: Problems): { namespace: string; name: string } | undefined {
  if (value === undefined) return undefined;
  const m = /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)\/([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$/.exec(value);
  if (!m) {
    p.list.push(`--sidecar: ${JSON.stringify(value)} is not NAMESPACE/NAME of a workload`);
    return undefined;
  }
  return { namespace: m[1] as string, name: m[3] as string };
}

export function loadInitConfig(argv: string[]): InitConfig {
  const { values } = parse(() => parseArgs({ args: argv, strict: true, options: {
    ...captureOptions,
    'dry-run': { type: 'boolean', default: false },
    cleanup: { type: 'boolean', default: false },
    sidecar: { type: 'boolean', default: false },
  } }));
  const p = new Problems();
  const capture = captureSettings(values, p, values.sidecar ? 'sidecar' : 'node');
  p.throwIfAny();
  return { capture, dryRun: Boolean(values['dry-run']), cleanup: Boolean(values.cleanup) };
}

export function loadAgentConfig(argv: string[], env: NodeJS.ProcessEnv): AgentConfig {
  const { values: v } = parse(() => parseArgs({ args: argv, strict: true, options: {
    ...captureOptions,
    node: { type: 'string', default: env.MESHLET_NODE_NAME ?? env.NODE_NAME },
    sidecar: { type: 'string' },
    workloads: { type: 'string' },
    kubernetes: { type: 'boolean', default: false },
    kubeconfig: { type: 'string' },
    'trust-domain': { type: 'string' },
    'ca-dir': { type: 'string' },
    'ca-url': { type: 'string' },
    'token-file': { type: 'string' },
    'trust-bundle': { type: 'string' },
    'bundle-poll': { type: 'string', default: defaults.bundlePoll },
    'ca-timeout': { type: 'string', default: defaults.caRequestTimeout },
    'cert-ttl': { type: 'string', default: defaults.certTtl },
    'admin-port': { type: 'string', default: String(defaults.ports.admin) },
    'readiness-port': { type: 'string', default: String(defaults.ports.readiness) },
    'admin-address': { type: 'string', default: defaults.adminAddress },
    'readiness-address': { type: 'string', default: defaults.readinessAddress },
    'metrics-port': { type: 'string', default: String(defaults.ports.metrics) },
    'metrics-address': { type: 'string', default: defaults.metricsAddress },
    metrics: { type: 'string', default: 'on' },
    'access-log': { type: 'string', default: 'on' },
    'max-connections': { type: 'string', default: '16384' },
    'idle-timeout': { type: 'string', default: '1h' },
    'probe-gate-ttl': { type: 'string', default: '4s' },
    'heap-headroom': { type: 'string', default: '32' },
    'preserve-source-ip': { type: 'string', default: 'on' },
    'non-tcp-to-strict': { type: 'string', default: 'allow' },
    'max-connections-per-source': { type: 'string', default: '1024' },
    'max-pending-handshakes': { type: 'string', default: '1024' },
    'max-pending-handshakes-per-source': { type: 'string', default: '64' },
    'handshake-rate': { type: 'string', default: '200' },
    'tunnel-stall-timeout': { type: 'string', default: '30s' },
    'tunnel-queue-budget': { type: 'string', default: '256' },
    'log-level': { type: 'string', default: env.MESHLET_LOG_LEVEL ?? defaults.logLevel },
    'connect-timeout': { type: 'string', default: defaults.connectTimeout },
    'handshake-timeout': { type: 'string', default: defaults.handshakeTimeout },
    drain: { type: 'string', default: defaults.drain },
    'workloads-poll': { type: 'string', default: defaults.workloadsPoll },
  } }));
  const p = new Problems();
  const nodeName = p.required('node (or MESHLET_NODE_NAME)', v.node);
  const workloads = workloadsConfig(v, p);
  const identity = identityConfig(v, p);
  const sidecar = sidecarWorkload(v.sidecar, p);
  const capture = captureSettings(v, p, sidecar ? 'sidecar' : 'node');
  const logLevel = String(v['log-level']);
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) p.list.push(`--log-level: ${JSON.stringify(logLevel)} is not one of ${LOG_LEVELS.join(', ')}`);
  const config: AgentConfig = {
    nodeName, workloads, identity,
    ...(sidecar ? { sidecar } : {}),
    ports: {
      outbound: capture.outboundPort,
      inboundPlaintext: capture.inboundPlaintextPort,
      tunnel: capture.tunnelPort,
      admin: p.port('admin-port', String(v['admin-port'])),
      readiness: p.port('readiness-port', String(v['readiness-port'])),
      metrics: p.port('metrics-port', String(v['metrics-port'])),
    },
    adminAddress: p.ip('admin-address', String(v['admin-address'])),
    readinessAddress: p.ip('readiness-address', String(v['readiness-address'])),
    metricsAddress: p.ip('metrics-address', String(v['metrics-address'])),
    logLevel: logLevel as LogLevel,
    connectTimeoutMs: p.duration('connect-timeout', String(v['connect-timeout']), 100, 120_000),
    handshakeTimeoutMs: p.duration('handshake-timeout', String(v['handshake-timeout']), 100, 120_000),
    drainMs: p.duration('drain', String(v.drain), 0, 3_600_000),
    metrics: p.onOff('metrics', String(v.metrics)),
    accessLog: p.onOff('access-log', String(v['access-log'])),
    maxConnections: p.int('max-connections', String(v['max-connections']), 1, 1_000_000),
    idleTimeoutMs: p.duration('idle-timeout', String(v['idle-timeout']), 1000, 7 * 86_400_000),
    maxConnectionsPerSource: p.int('max-connections-per-source', String(v['max-connections-per-source']), 1, 1_000_000),
    maxPendingHandshakes: p.int('max-pending-handshakes', String(v['max-pending-handshakes']), 1, 1_000_000),
    maxPendingHandshakesPerSource: p.int('max-pending-handshakes-per-source', String(v['max-pending-handshakes-per-source']), 1, 1_000_000),
    handshakeRate: p.int('handshake-rate', String(v['handshake-rate']), 1, 1_000_000),
    tunnelStallTimeoutMs: p.duration('tunnel-stall-timeout', String(v['tunnel-stall-timeout']), 1000, 3_600_000),
    tunnelQueueBudgetMiB: p.int('tunnel-queue-budget', String(v['tunnel-queue-budget']), 1, 1_048_576),
    // ipset timeouts are whole seconds.
    preserveSourceIp: p.onOff('preserve-source-ip', String(v['preserve-source-ip'])) && !sidecar,
    nonTcpToStrict: p.oneOf('non-tcp-to-strict', String(v['non-tcp-to-strict']), ['allow', 'drop'] as const),
    probeGateTtlMs: Math.round(p.duration('probe-gate-ttl', String(v['probe-gate-ttl']), 2_000, 600_000) / 1000) * 1000,
    heapHeadroomMiB: p.int('heap-headroom', String(v['heap-headroom']), 0, 1024),
    capture,
  };
  // A sidecar's own listeners are reached directly: the ones this agent really uses.
  if (sidecar) config.capture.passPorts = [config.ports.tunnel, config.ports.metrics, config.ports.readiness];
  // Capture's three ports are checked with the capture settings.
  const ports = Object.entries(config.ports);
  const capturePorts = new Set(['outbound', 'inboundPlaintext', 'tunnel']);
  for (const [i, [name, port]] of ports.entries()) {
    const clash = ports.slice(0, i).find(([other, otherPort]) => otherPort === port && !(capturePorts.has(other) && capturePorts.has(name)));
    if (clash) p.list.push(`port ${port} is used for both ${clash[0]} and ${name}`);
  }
  p.throwIfAny();
  return config;
}

/** Kubernetes CPU quantities: 100m, 0.5, 2. In millicores. */
export function parseCpu(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(m?)$/.exec(text.trim());
  if (!m) return undefined;
  return m[2] === 'm' ? Number(m[1]) : Number(m[1]) * 1000;
}

const MEMORY_UNITS: Record<string, number> = { Ki: 1 / 1024, Mi: 1, Gi: 1024, Ti: 1024 * 1024, k: 1000 / 1048576, M: 1e6 / 1048576, G: 1e9 / 1048576 };

/** Kubernetes memory quantities: 128Mi, 1Gi, 500M. In MiB. */
export function parseMemory(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G)$/.exec(text.trim());
  if (!m) return undefined;
  return Number(m[1]) * (MEMORY_UNITS[m[2] as string] as number);
}

export const costDefaults = {
  nodes: '10', podsPerNode: '30',
  // Istio's injected sidecar requests; the meshlet DaemonSet's (manifests/agent-daemonset.yaml).
  sidecarCpu: '100m', sidecarMemory: '128Mi', agentCpu: '100m', agentMemory: '128Mi',
  // Illustrative on-demand list prices (USD); pass your own.
  vcpuHour: '0.033', gibHour: '0.0045', hoursPerMonth: '730',
};

/** `meshlet cost`: the cluster's shape, the two meshes' requests, and prices. */
export function loadCostConfig(argv: string[]): { inputs: import('./cost.ts').CostInputs; json: boolean } {
  const d = costDefaults;
  const { values: v } = parse(() => parseArgs({ args: argv, strict: true, options: {
    nodes: { type: 'string', default: d.nodes },
    'pods-per-node': { type: 'string', default: d.podsPerNode },
    'sidecar-cpu': { type: 'string', default: d.sidecarCpu },
    'sidecar-memory': { type: 'string', default: d.sidecarMemory },
    'agent-cpu': { type: 'string', default: d.agentCpu },
    'agent-memory': { type: 'string', default: d.agentMemory },
    'vcpu-hour': { type: 'string', default: d.vcpuHour },
    'gib-hour': { type: 'string', default: d.gibHour },
    'hours-per-month': { type: 'string', default: d.hoursPerMonth },
    json: { type: 'boolean', default: false },
  } }));
  const p = new Problems();
  const cpu = (flag: string) => {
    const n = parseCpu(String(v[flag as keyof typeof v]));
    if (n === undefined) p.list.push(`--${flag}: ${JSON.stringify(v[flag as keyof typeof v])} is not a CPU quantity (e.g. 100m, 0.5)`);
    return n ?? 0;
  };
  const memory = (flag: string) => {
    const n = parseMemory(String(v[flag as keyof typeof v]));
    if (n === undefined) p.list.push(`--${flag}: ${JSON.stringify(v[flag as keyof typeof v])} is not a memory quantity (e.g. 128Mi, 1Gi)`);
    return n ?? 0;
  };
  const price = (flag: string) => {
    const text = String(v[flag as keyof typeof v]);
    const n = Number(text);
    if (!/^\d+(\.\d+)?$/.test(text)) p.list.push(`--${flag}: ${JSON.stringify(text)} is not a price (e.g. 0.033)`);
    return n;
  };
  const inputs = {
    nodes: p.int('nodes', String(v.nodes), 1, 100_000),
    podsPerNode: p.int('pods-per-node', String(v['pods-per-node']), 1, 10_000),
    sidecar: { cpuMillis: cpu('sidecar-cpu'), memoryMiB: memory('sidecar-memory') },
    agent: { cpuMillis: cpu('agent-cpu'), memoryMiB: memory('agent-memory') },
    vcpuHour: price('vcpu-hour'),
    gibHour: price('gib-hour'),
    hoursPerMonth: p.int('hours-per-month', String(v['hours-per-month']), 1, 744),
  };
  p.throwIfAny();
  return { inputs, json: Boolean(v.json) };
}

/** `meshlet policy check`: a connection, and where the workloads and policies come from. */
export function loadPolicyCheckConfig(argv: string[]): { from: string; to: string; json: boolean; workloads: WorkloadsConfig } {
  const { values: v } = parse(() => parseArgs({ args: argv, strict: true, options: {
    from: { type: 'string' },
    to: { type: 'string' },
    json: { type: 'boolean', default: false },
    workloads: { type: 'string' },
    kubernetes: { type: 'boolean', default: false },
    kubeconfig: { type: 'string' },
    'trust-domain': { type: 'string' },
    'workloads-poll': { type: 'string', default: defaults.workloadsPoll },
  } }));
  const p = new Problems();
  const from = p.required('from (SPIFFE ID or IP)', v.from);
  const to = p.required('to (namespace/name:port or ip:port)', v.to);
  const workloads = workloadsConfig(v, p);
  p.throwIfAny();
  return { from, to, json: Boolean(v.json), workloads };
}

function workloadsConfig(v: Record<string, unknown>, p: Problems): WorkloadsConfig {
  const file = v.workloads as string | undefined;
  const kubeconfig = v.kubeconfig as string | undefined;
  if (v.kubernetes || kubeconfig) {
    if (file) p.list.push('--workloads (file) and --kubernetes/--kubeconfig (API) exclude each other');
    const trustDomain = String(v['trust-domain'] ?? defaults.ca.trustDomain);
    if (!/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(trustDomain)) p.list.push(`--trust-domain: ${JSON.stringify(trustDomain)} is not a trust domain (lower-case DNS name)`);
    return { kind: 'kubernetes', kubeconfig, trustDomain };
  }
  if (v['trust-domain']) p.list.push('--trust-domain only applies with --kubernetes (the workloads file names its own)');
  return {
    kind: 'file',
    path: p.required('workloads (or --kubernetes)', file),
    pollMs: p.duration('workloads-poll', String(v['workloads-poll']), 50, 60_000),
  };
}

function identityConfig(v: Record<string, unknown>, p: Problems): IdentityConfig {
  const caDir = v['ca-dir'] as string | undefined;
  const url = v['ca-url'] as string | undefined;
  if (caDir && url) {
    p.list.push('--ca-dir (embedded local CA) and --ca-url (CA service) exclude each other');
  }
  if (url) {
    let parsed: URL | undefined;
    try { parsed = new URL(url); } catch { /* reported below */ }
    if (parsed?.protocol !== 'https:') p.list.push(`--ca-url: ${JSON.stringify(url)} is not an https:// URL`);
    return {
      mode: 'ca-service',
      url,
      tokenFile: p.required('token-file (with --ca-url)', v['token-file'] as string | undefined),
      trustBundleFile: p.required('trust-bundle (with --ca-url)', v['trust-bundle'] as string | undefined),
      bundlePollMs: p.duration('bundle-poll', String(v['bundle-poll']), 100, 3_600_000),
      requestTimeoutMs: p.duration('ca-timeout', String(v['ca-timeout']), 100, 120_000),
    };
  }
  for (const flag of ['token-file', 'trust-bundle'] as const) if (v[flag]) p.list.push(`--${flag} only applies with --ca-url`);
  return {
    mode: 'local',
    caDir: p.required('ca-dir (or --ca-url)', caDir),
    // A certificate shorter-lived than 10 s would spend most of its life being renewed.
    certTtlMs: p.duration('cert-ttl', String(v['cert-ttl']), 10_000, 90 * 86_400_000),
  };
}

const caBackendOptions = {
  'ca-dir': { type: 'string' },
  kubernetes: { type: 'boolean', default: false },
  kubeconfig: { type: 'string' },
  namespace: { type: 'string', default: defaults.ca.namespace },
  'agent-service-account': { type: 'string', default: defaults.ca.agentServiceAccount },
  'root-secret': { type: 'string', default: defaults.ca.rootSecret },
  'bundle-configmap': { type: 'string', default: defaults.ca.bundleConfigMap },
} as const;

/** --ca-dir (files) or --kubernetes (Secret, ConfigMap, TokenReview); `serve` also needs the local authorizer's files. */
function caBackend(v: Record<string, unknown>, p: Problems, serve: boolean): CaBackend {
  if (v.kubernetes) {
    for (const flag of ['ca-dir', 'tokens', 'workloads']) if (v[flag]) p.list.push(`--${flag} does not apply with --kubernetes`);
    const names = ['namespace', 'agent-service-account', 'root-secret', 'bundle-configmap'] as const;
    for (const flag of names) {
      if (!/^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/.test(String(v[flag]))) p.list.push(`--${flag}: ${JSON.stringify(v[flag])} is not a Kubernetes object name`);
    }
    return {
      kind: 'kubernetes', kubeconfig: v.kubeconfig as string | undefined, namespace: String(v.namespace),
      agentServiceAccount: String(v['agent-service-account']), rootSecret: String(v['root-secret']), bundleConfigMap: String(v['bundle-configmap']),
    };
  }
  if (v.kubeconfig) p.list.push('--kubeconfig only applies with --kubernetes');
  return {
    kind: 'local',
    caDir: p.required('ca-dir (or --kubernetes)', v['ca-dir'] as string | undefined),
    tokensFile: serve ? p.required('tokens', v.tokens as string | undefined) : '',
    workloadsFile: serve ? p.required('workloads', v.workloads as string | undefined) : '',
  };
}

/** `meshlet ca rotate STEP`: which store to rotate. */
export function loadCaRotateConfig(argv: string[]): { step: 'prepare' | 'activate' | 'finish'; backend: CaBackend } {
  const { values: v, positionals } = parse(() => parseArgs({ args: argv, strict: true, allowPositionals: true, options: caBackendOptions }));
  const p = new Problems();
  const step = positionals[0] ?? '';
  if (positionals.length !== 1 || !['prepare', 'activate', 'finish'].includes(step)) {
    p.list.push('usage: meshlet ca rotate prepare|activate|finish (--ca-dir DIR | --kubernetes)');
  }
  const backend = caBackend(v, p, false);
  p.throwIfAny();
  return { step: step as 'prepare' | 'activate' | 'finish', backend };
}

export function loadCaServeConfig(argv: string[], env: NodeJS.ProcessEnv): CaServeConfig {
  const c = defaults.ca;
  const { values: v } = parse(() => parseArgs({ args: argv, strict: true, options: {
    ...caBackendOptions,
    'trust-domain': { type: 'string', default: c.trustDomain },
    'listen-address': { type: 'string', default: c.listenAddress },
    port: { type: 'string', default: String(c.port) },
    tokens: { type: 'string' },
    workloads: { type: 'string' },
    'cert-ttl': { type: 'string', default: defaults.certTtl },
    'max-body': { type: 'string', default: String(c.maxBody) },
    rate: { type: 'string', default: String(c.rate) },
    burst: { type: 'string', default: String(c.burst) },
    san: { type: 'string', multiple: true },
    reload: { type: 'string', default: c.reload },
    'log-level': { type: 'string', default: env.MESHLET_LOG_LEVEL ?? defaults.logLevel },
  } }));
  const p = new Problems();
  const logLevel = String(v['log-level']);
  if (!(LOG_LEVELS as readonly string[]).includes(logLevel)) p.list.push(`--log-level: ${JSON.stringify(logLevel)} is not one of ${LOG_LEVELS.join(', ')}`);
  const servingNames = (v.san ?? [c.servingNames]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  for (const n of servingNames) {
    if (!isIP(n) && !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/i.test(n)) p.list.push(`--san: ${JSON.stringify(n)} is neither a DNS name nor an IP address`);
  }
  const config: CaServeConfig = {
    backend: caBackend(v, p, true),
    trustDomain: String(v['trust-domain']),
    listenAddress: p.ip('listen-address', String(v['listen-address'])),
    port: p.port('port', String(v.port)),
    certTtlMs: p.duration('cert-ttl', String(v['cert-ttl']), 10_000, 90 * 86_400_000),
    maxBodyBytes: p.int('max-body', String(v['max-body']), 1024, 1_048_576),
    ratePerSecond: p.int('rate', String(v.rate), 1, 100_000),
    burst: p.int('burst', String(v.burst), 1, 100_000),
    servingNames,
    reloadMs: p.duration('reload', String(v.reload), 100, 3_600_000),
    logLevel: logLevel as LogLevel,
  };
  p.throwIfAny();
  return config;
}
