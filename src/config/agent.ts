// `meshlet agent`: its flag table and its one validated configuration.
import { isIPv4 } from 'node:net';
import type { CaptureSettings } from '../capture/rules.ts';
import type { PortRange } from '../capture/socket.ts';
import { defaultWorkers } from '../cpu-limit.ts';
import { PORTS } from '../ports.ts';
import { CAPTURE_FLAGS, captureSettings } from './capture.ts';
import { DNS_NAME, KEY_ALGORITHMS, type KeyAlgorithm, LOG_LEVEL_FLAG, type LogLevel, MALLOC_TRIM_FLAG, MEMORY_TARGET_FLAG, RELEASE_STARTUP_PAGES_FLAG, WORKLOADS_FLAGS, type WorkloadsConfig, workloadsConfig } from './common.ts';
import { type Flag, type FlagValues, type Problems, readFlags } from './flags.ts';

/** The old generation's headroom once up, MiB (heap-headroom.ts): the agent's default, and the CA's. */
export const HEAP_HEADROOM_MIB = 8;

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

/** A certificate shorter-lived than 10 s would spend most of its life being renewed. */
export const CERT_TTL = { type: 'duration', min: 10_000, max: 90 * 86_400_000, default: '24h' } as const;

const MILLION = 1_000_000;

export const AGENT_FLAGS = [
  { name: 'node', type: 'text', arg: 'NAME', env: ['MESHLET_NODE_NAME', 'NODE_NAME'], help: 'this node\'s name' },
  { name: 'sidecar', type: 'text', arg: 'NS/NAME', pattern: /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, patternHelp: 'NAMESPACE/NAME of a workload', help: 'sidecar mode: serve only this workload, from inside its pod (run with group id --proxy-gid; kept to measure the sidecar pattern)' },
  ...WORKLOADS_FLAGS,
  { name: 'ca-dir', type: 'text', arg: 'DIR', help: 'embedded local CA: the root from `meshlet ca init`' },
  { name: 'cert-ttl', ...CERT_TTL, help: 'with --ca-dir: workload certificate lifetime, renewed at half life' },
  { name: 'key-algorithm', type: 'one-of', values: KEY_ALGORITHMS, default: 'ecdsa-p256', help: 'workload keys (the CA signs either kind, under a root of either kind)' },
  { name: 'ca-url', type: 'text', arg: 'URL', help: 'the CA service (https://...); excludes --ca-dir' },
  { name: 'token-file', type: 'text', arg: 'FILE', help: 'this node\'s token for the CA, re-read per request' },
  { name: 'trust-bundle', type: 'text', arg: 'FILE', help: 'roots (PEM) that verify the CA service\'s certificate' },
  { name: 'bundle-poll', type: 'duration', min: 100, max: 3_600_000, default: '30s', help: 'how often the trust bundle is fetched (root rotation)' },
  { name: 'ca-timeout', type: 'duration', min: 100, max: 120_000, default: '10s', help: 'CA request timeout' },
  { name: 'connect-timeout', type: 'duration', min: 100, max: 120_000, default: '5s', help: 'upstream and tunnel connect timeout' },
  { name: 'handshake-timeout', type: 'duration', min: 100, max: 120_000, default: '5s', help: 'TLS handshake timeout' },
  { name: 'drain', type: 'duration', min: 0, max: 3_600_000, default: '5s', help: 'how long SIGTERM lets open connections finish' },
  LOG_LEVEL_FLAG,
  { name: 'admin-port', type: 'port', default: String(PORTS.admin), help: 'admin API: GET /config_dump, GET and POST /logging?level=' },
  { name: 'admin-address', type: 'ip', default: '127.0.0.1', help: 'where the admin API listens (it changes the agent: loopback)' },
  { name: 'readiness-port', type: 'port', default: String(PORTS.readiness), help: '/healthz/ready' },
  // kubelet probes from the node, Prometheus scrapes from another host; neither says more than an operator may see.
  { name: 'readiness-address', type: 'ip', default: '0.0.0.0', help: 'where /healthz/ready listens' },
  { name: 'metrics-port', type: 'port', default: String(PORTS.metrics), help: 'Prometheus /metrics' },
  { name: 'metrics-address', type: 'ip', default: '0.0.0.0', help: 'where /metrics listens' },
  { name: 'metrics', type: 'on-off', default: 'on', help: 'Prometheus metrics (off: no registry, no listener, no per-connection cost)' },
  { name: 'access-log', type: 'on-off', default: 'on', help: 'one access-log line per connection' },
  { name: 'max-connections', type: 'int', min: 1, max: MILLION, default: '16384', help: 'connections the agent holds at most' },
  { name: 'max-connections-per-source', type: 'int', min: 1, max: MILLION, default: '1024', help: '... per source address' },
  { name: 'max-pending-handshakes', type: 'int', min: 1, max: MILLION, default: '1024', help: 'tunnel sockets still in their handshake: a budget of their own' },
  { name: 'max-pending-handshakes-per-source', type: 'int', min: 1, max: MILLION, default: '64', help: '... per source address' },
  { name: 'handshake-rate', type: 'int', min: 1, max: MILLION, default: '200', help: 'tunnel handshakes a second per source' },
  { name: 'tunnel-stall-timeout', type: 'duration', min: 1000, max: 3_600_000, default: '30s', help: 'reset a tunnel session whose peer acknowledged nothing this long' },
  { name: 'tunnel-queue-budget', type: 'int', arg: 'MIB', min: 1, max: 1_048_576, default: '256', help: 'tunnel send queues of the node together; past it stalled sessions are reset' },
  { name: 'idle-timeout', type: 'duration', min: 1000, max: 7 * 86_400_000, default: '1h', help: 'reset relayed connections silent both ways this long' },
  { name: 'preserve-source-ip', type: 'on-off', default: 'on', help: 'local pods see their clients\' addresses, not the node\'s' },
  { name: 'source-ports', type: 'text', arg: 'LO-HI', pattern: /^\d{1,5}-\d{1,5}$/, patternHelp: 'a port range LO-HI', default: '1024-32767', help: 'ports a delivery takes on a client\'s address: outside the pods\' ip_local_port_range' },
  { name: 'non-tcp-to-strict', type: 'one-of', values: ['allow', 'drop'], default: 'allow', help: 'drop UDP, SCTP and other non-TCP forwarded to STRICT pods (ICMP and the node\'s own pass)' },
  { name: 'probe-gate-ttl', type: 'duration', min: 2_000, max: 600_000, default: '4s', help: 'a dead or stalled agent\'s pods fail kubelet\'s probes this long after it stops' },
  { name: 'workers', type: 'int', arg: 'N', min: 1, max: 64, help: 'data planes, each a thread sharing the data ports; default: the CPU limit, else a quarter of the cores (at least 1); 1: the agent\'s own thread' },
  { name: 'min-workers', type: 'int', arg: 'N', min: 1, max: 64, default: '1', help: 'data planes started at once; the others, up to --workers, start when those serving are busy' },
  { name: 'young-collection', type: 'int', arg: 'MIB', min: 0, max: 1024, default: '4', help: 'tunnel data relayed in new buffers between two young collections of a data plane (dead chunks freed, a smaller headroom enough); 0: V8 alone' },
  { name: 'heap-headroom', type: 'int', arg: 'MIB', min: 0, max: 1024, default: String(HEAP_HEADROOM_MIB), help: 'old-generation headroom above the live heap once up (fewer full GCs on bulk traffic); 0: V8\'s own' },
  MEMORY_TARGET_FLAG,
  MALLOC_TRIM_FLAG,
  RELEASE_STARTUP_PAGES_FLAG,
  { name: 'remote-workloads', type: 'one-of', values: ['pods', 'slices'], default: 'pods', help: 'with --kubernetes: other nodes\' pods from watching every Pod, or from the CA\'s MeshAddressSlices (--address-slices on)' },
  { name: 'pod-range', type: 'list', arg: 'CIDR', help: 'with slices: the cluster\'s pod ranges, for CNIs that leave Nodes\' podCIDRs empty (repeat; default: the Nodes\' podCIDRs)' },
  { name: 'slices-namespace', type: 'text', arg: 'NS', pattern: DNS_NAME, patternHelp: 'a namespace name', default: 'meshlet-system', help: 'where the MeshAddressSlices are' },
  ...CAPTURE_FLAGS,
] as const satisfies readonly Flag[];

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
  metrics: boolean;
  accessLog: boolean;
  maxConnections: number;
  maxConnectionsPerSource: number;
  maxPendingHandshakes: number;
  maxPendingHandshakesPerSource: number;
  handshakeRate: number;
  tunnelStallTimeoutMs: number;
  tunnelQueueBudgetMiB: number;
  youngCollectionMiB: number;
  idleTimeoutMs: number;
  /** Off in sidecar mode, which delivers inside the pod. */
  preserveSourceIp: boolean;
  /** Where a source-preserving delivery picks its port (capture/socket.ts openTransparentSocket). */
  sourcePorts: PortRange;
  nonTcpToStrict: 'allow' | 'drop';
  /** Whole seconds: ipset timeouts are. */
  probeGateTtlMs: number;
  heapHeadroomMiB: number;
  memoryTargetMiB: number;
  mallocTrimMs: number;
  releaseStartupPages: boolean;
  keyAlgorithm: KeyAlgorithm;
  /** Data planes at most: 1 runs in the agent's thread, more run as worker threads (proxy/workers.ts). */
  workers: number;
  /** Data planes started at once; the others start when those serving are busy (proxy/worker-demand.ts). */
  minWorkers: number;
  capture: CaptureSettings;
}

/** --remote-workloads slices: this node's Pods watched, the others' from the address slices. */
function remoteWorkloads(w: WorkloadsConfig, v: { node?: string | undefined; 'remote-workloads': string; 'slices-namespace': string; 'pod-range': string[] }, p: Problems): WorkloadsConfig {
  for (const r of v['pod-range']) {
    const [ip, len, extra] = r.split('/');
    if (!isIPv4(ip ?? '') || !/^\d{1,2}$/.test(len ?? '') || Number(len) > 32 || extra !== undefined) p.add(`--pod-range: ${r} is not an IPv4 CIDR (a.b.c.d/n)`);
  }
  if (v['remote-workloads'] !== 'slices') {
    if (v['pod-range'].length > 0) p.add('--pod-range only applies with --remote-workloads slices');
    return w;
  }
  if (w.kind !== 'kubernetes') {
    p.add('--remote-workloads slices only applies with --kubernetes');
    return w;
  }
  const podRanges = v['pod-range'].length > 0 ? { podRanges: v['pod-range'] } : {};
  return { ...w, remoteFromSlices: { node: v.node ?? '', namespace: v['slices-namespace'], ...podRanges } };
}

export function loadAgentConfig(argv: string[], env: NodeJS.ProcessEnv): AgentConfig {
  const { values: v, problems: p } = readFlags(AGENT_FLAGS, argv, env);
  const [namespace, name] = v.sidecar?.split('/') ?? [];
  const sidecar = namespace && name ? { namespace, name } : undefined;
  const capture = captureSettings(v, p, sidecar ? 'sidecar' : 'node',
    [['--admin-port', v['admin-port']], ['--readiness-port', v['readiness-port']], ['--metrics-port', v['metrics-port']]]);
  const config: AgentConfig = {
    nodeName: p.required('node (or MESHLET_NODE_NAME)', v.node),
    workloads: remoteWorkloads(workloadsConfig(v, p), v, p),
    identity: identityConfig(v, p),
    ...(sidecar ? { sidecar } : {}),
    ports: {
      outbound: capture.outboundPort, inboundPlaintext: capture.inboundPlaintextPort, tunnel: capture.tunnelPort,
      admin: v['admin-port'], readiness: v['readiness-port'], metrics: v['metrics-port'],
    },
    adminAddress: v['admin-address'], readinessAddress: v['readiness-address'], metricsAddress: v['metrics-address'],
    logLevel: v['log-level'],
    connectTimeoutMs: v['connect-timeout'], handshakeTimeoutMs: v['handshake-timeout'], drainMs: v.drain,
    metrics: v.metrics, accessLog: v['access-log'],
    maxConnections: v['max-connections'], maxConnectionsPerSource: v['max-connections-per-source'],
    maxPendingHandshakes: v['max-pending-handshakes'], maxPendingHandshakesPerSource: v['max-pending-handshakes-per-source'],
    handshakeRate: v['handshake-rate'],
    tunnelStallTimeoutMs: v['tunnel-stall-timeout'], tunnelQueueBudgetMiB: v['tunnel-queue-budget'],
    youngCollectionMiB: v['young-collection'],
    idleTimeoutMs: v['idle-timeout'],
    preserveSourceIp: v['preserve-source-ip'] && !sidecar,
    sourcePorts: portRange('--source-ports', v['source-ports'], p),
    nonTcpToStrict: v['non-tcp-to-strict'],
    probeGateTtlMs: Math.round(v['probe-gate-ttl'] / 1000) * 1000,
    heapHeadroomMiB: v['heap-headroom'],
    memoryTargetMiB: v['memory-target'],
    mallocTrimMs: v['malloc-trim'],
    releaseStartupPages: v['release-startup-pages'],
    keyAlgorithm: v['key-algorithm'],
    // A sidecar serves one pod: one thread, as the sidecars it stands for.
    workers: v.workers ?? (sidecar ? 1 : Math.max(defaultWorkers(), v['min-workers'])),
    minWorkers: sidecar ? 1 : v['min-workers'],
    capture,
  };
  // A sidecar's own listeners are reached directly: the ones this agent really uses.
  if (sidecar) config.capture.passPorts = [config.ports.tunnel, config.ports.metrics, config.ports.readiness];
  if (v.workers !== undefined && v['min-workers'] > v.workers) p.add(`--min-workers ${v['min-workers']} is more than --workers ${v.workers}`);
  p.throwIfAny();
  return config;
}

/** LO-HI, unprivileged, and wide enough that eight random picks rarely all meet a listener. */
function portRange(flag: string, text: string, p: Problems): PortRange {
  const [lo, hi] = text.split('-').map(Number) as [number, number];
  if (!(lo >= 1024 && hi <= 65535 && hi - lo + 1 >= 1024)) p.add(`${flag}: ${text} is not a range of at least 1024 ports within 1024-65535`);
  return [lo, hi];
}

function identityConfig(v: FlagValues<typeof AGENT_FLAGS>, p: Problems): IdentityConfig {
  const url = v['ca-url'];
  if (v['ca-dir'] && url) p.add('--ca-dir (embedded local CA) and --ca-url (CA service) exclude each other');
  if (url) {
    let parsed: URL | undefined;
    try { parsed = new URL(url); } catch { /* reported below */ }
    if (parsed?.protocol !== 'https:') p.add(`--ca-url: ${JSON.stringify(url)} is not an https:// URL`);
    return {
      mode: 'ca-service', url,
      tokenFile: p.required('token-file (with --ca-url)', v['token-file']),
      trustBundleFile: p.required('trust-bundle (with --ca-url)', v['trust-bundle']),
      bundlePollMs: v['bundle-poll'],
      requestTimeoutMs: v['ca-timeout'],
    };
  }
  for (const flag of ['token-file', 'trust-bundle'] as const) if (v[flag]) p.add(`--${flag} only applies with --ca-url`);
  return { mode: 'local', caDir: p.required('ca-dir (or --ca-url)', v['ca-dir']), certTtlMs: v['cert-ttl'] };
}
