// The flag tables of the smaller commands: `policy check`, `policy suggest`, `status` and `cost`.
import { type CostInputs, parseCpu, parseMemory } from '../cost.ts';
import { PORTS } from '../ports.ts';
import { WORKLOADS_FLAGS, type WorkloadsConfig, workloadsConfig } from './common.ts';
import { type Flag, readFlags } from './flags.ts';

export const POLICY_CHECK_FLAGS = [
  { name: 'from', type: 'text', arg: 'ID|IP', help: 'the source: a SPIFFE ID or a pod\'s IP' },
  { name: 'to', type: 'text', arg: 'NS/NAME:PORT|IP:PORT', help: 'the destination workload and port' },
  { name: 'json', type: 'boolean', help: 'the decision as JSON' },
  ...WORKLOADS_FLAGS,
] as const satisfies readonly Flag[];

/** `meshlet policy check`: a connection, and where the workloads and policies come from. */
export function loadPolicyCheckConfig(argv: string[]): { from: string; to: string; json: boolean; workloads: WorkloadsConfig } {
  const { values: v, problems: p } = readFlags(POLICY_CHECK_FLAGS, argv);
  const from = p.required('from (SPIFFE ID or IP)', v.from);
  const to = p.required('to (namespace/name:port or ip:port)', v.to);
  const workloads = workloadsConfig(v, p);
  p.throwIfAny();
  return { from, to, json: v.json, workloads };
}

export const POLICY_SUGGEST_FLAGS = [
  { name: 'access-log', type: 'list', arg: 'FILE', help: 'the agents\' logs (their access lines, JSON), the flag once per file; - for standard input' },
  { name: 'audit', type: 'boolean', help: 'propose AUDIT policies (counted, not enforced) to try before ALLOW' },
  { name: 'output', type: 'one-of', values: ['crd', 'workloads'], default: 'crd', help: 'MeshPolicy objects, or a workloads file\'s policies' },
  ...WORKLOADS_FLAGS,
] as const satisfies readonly Flag[];

/** `meshlet policy suggest`: where the observed traffic and the workloads come from. */
export function loadPolicySuggestConfig(argv: string[]): { accessLogs: string[]; audit: boolean; output: 'crd' | 'workloads'; workloads: WorkloadsConfig } {
  const { values: v, problems: p } = readFlags(POLICY_SUGGEST_FLAGS, argv);
  if (v['access-log'].length === 0) p.add('--access-log FILE is required (the agents\' logs; - for standard input)');
  const workloads = workloadsConfig(v, p);
  p.throwIfAny();
  return { accessLogs: v['access-log'], audit: v.audit, output: v.output as 'crd' | 'workloads', workloads };
}

export const STATUS_FLAGS = [
  { name: 'admin', type: 'text', arg: 'URL', default: `http://127.0.0.1:${PORTS.admin}`, help: 'the agent\'s admin API' },
  { name: 'json', type: 'boolean', help: 'the whole config dump as JSON' },
] as const satisfies readonly Flag[];

export function loadStatusConfig(argv: string[]): { admin: string; json: boolean } {
  const { values: v, problems: p } = readFlags(STATUS_FLAGS, argv);
  let url: URL | undefined;
  try { url = new URL(v.admin); } catch { /* below */ }
  if (url?.protocol !== 'http:') p.add(`--admin: ${JSON.stringify(v.admin)} is not an http:// URL`);
  p.throwIfAny();
  return { admin: v.admin, json: v.json };
}

const QUANTITY = { type: 'text', arg: 'Q' } as const;
const PRICE = { type: 'text', arg: 'PRICE', pattern: /^\d+(\.\d+)?$/, patternHelp: 'a price (e.g. 0.033)' } as const;

export const COST_FLAGS = [
  { name: 'nodes', type: 'int', min: 1, max: 100_000, default: '10', help: 'nodes in the cluster' },
  { name: 'pods-per-node', type: 'int', min: 1, max: 10_000, default: '30', help: 'meshed pods per node' },
  // Istio's injected sidecar requests; the meshlet DaemonSet's (manifests/agent-daemonset.yaml).
  { name: 'sidecar-cpu', ...QUANTITY, default: '100m', help: 'one sidecar\'s CPU request (Istio\'s default)' },
  { name: 'sidecar-memory', ...QUANTITY, default: '128Mi', help: 'one sidecar\'s memory request (Istio\'s default)' },
  { name: 'agent-cpu', ...QUANTITY, default: '100m', help: 'one meshlet agent\'s CPU request (the DaemonSet\'s)' },
  { name: 'agent-memory', ...QUANTITY, default: '128Mi', help: 'one meshlet agent\'s memory request (the DaemonSet\'s)' },
  // Illustrative on-demand list prices (USD); pass your own.
  { name: 'vcpu-hour', ...PRICE, default: '0.033', help: 'price of a vCPU for an hour (illustrative)' },
  { name: 'gib-hour', ...PRICE, default: '0.0045', help: 'price of a GiB of memory for an hour (illustrative)' },
  { name: 'hours-per-month', type: 'int', min: 1, max: 744, default: '730', help: 'hours billed a month' },
  { name: 'agents', type: 'list', arg: 'URL', help: 'measured instead of projected: the agents\' /metrics (e.g. http://NODE:15020/metrics), once each; per namespace, what they used over --window against sidecars for the same pods' },
  { name: 'window', type: 'duration', min: 1_000, max: 86_400_000, default: '60s', help: 'with --agents: how long to measure' },
  { name: 'json', type: 'boolean', help: 'inputs and projection as JSON' },
] as const satisfies readonly Flag[];

/** `meshlet cost`: the cluster's shape, the two meshes' requests (Kubernetes quantities), and prices; or the agents to measure. */
export function loadCostConfig(argv: string[]): { inputs: CostInputs; json: boolean; measure?: { agents: string[]; windowMs: number } } {
  const { values: v, problems: p } = readFlags(COST_FLAGS, argv);
  // A request of 0 reserves nothing: not a mesh to compare.
  const quantity = (flag: 'sidecar-cpu' | 'sidecar-memory' | 'agent-cpu' | 'agent-memory', parse: (t: string) => number | undefined, example: string) => {
    const n = parse(v[flag]);
    if (n === undefined || n <= 0) p.add(`--${flag}: ${JSON.stringify(v[flag])} is not a ${flag.endsWith('cpu') ? 'CPU' : 'memory'} quantity above 0 (e.g. ${example})`);
    return n ?? 0;
  };
  const inputs: CostInputs = {
    nodes: v.nodes,
    podsPerNode: v['pods-per-node'],
    sidecar: { cpuMillis: quantity('sidecar-cpu', parseCpu, '100m, 0.5'), memoryMiB: quantity('sidecar-memory', parseMemory, '128Mi, 1Gi') },
    agent: { cpuMillis: quantity('agent-cpu', parseCpu, '100m, 0.5'), memoryMiB: quantity('agent-memory', parseMemory, '128Mi, 1Gi') },
    vcpuHour: Number(v['vcpu-hour']),
    gibHour: Number(v['gib-hour']),
    hoursPerMonth: v['hours-per-month'],
  };
  for (const url of v.agents) if (!/^https?:\/\/[^\s/]+\/\S*$/.test(url)) p.add(`--agents: ${JSON.stringify(url)} is not an http(s) URL of an agent's /metrics`);
  p.throwIfAny();
  return { inputs, json: v.json, ...(v.agents.length > 0 ? { measure: { agents: v.agents, windowMs: v.window } } : {}) };
}

export const CHECK_FLAGS = [
  { name: 'pre', type: 'boolean', help: 'before install, on a node: what it needs (kernel, iptables mode, kube-proxy, CNI, sysctl)' },
  { name: 'kubeconfig', type: 'text', arg: 'PATH', help: 'after install (no --pre): the cluster to check [$KUBECONFIG, ~/.kube/config or in-cluster]' },
  { name: 'json', type: 'boolean', help: 'the results as JSON' },
] as const satisfies readonly Flag[];

/** `meshlet check --pre` checks this node before install; `meshlet check` the cluster after it. */
export function loadCheckConfig(argv: string[]): { json: boolean } & ({ scope: 'node' } | { scope: 'cluster'; kubeconfig: string | undefined }) {
  const { values: v, problems: p } = readFlags(CHECK_FLAGS, argv);
  if (v.pre && v.kubeconfig) p.add('--kubeconfig is for the cluster check after install; --pre checks this node');
  p.throwIfAny();
  return v.pre ? { json: v.json, scope: 'node' } : { json: v.json, scope: 'cluster', kubeconfig: v.kubeconfig };
}
