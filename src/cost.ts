// `meshlet cost`: what the mesh reserves in a cluster, and what that costs a month, with a sidecar per
// pod against one meshlet agent per node. Schedulers place pods by their requests, so reservations,
// not use, are what take node capacity and therefore what is billed.
import { table } from './status.ts';

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

export interface Reservation {
  cpuMillis: number;
  memoryMiB: number;
}

export interface CostInputs {
  nodes: number;
  podsPerNode: number;
  /** One sidecar's requests (Istio's injected default: 100m, 128Mi). */
  sidecar: Reservation;
  /** One meshlet agent's requests (the DaemonSet's: 100m, 128Mi). */
  agent: Reservation;
  /** Price of one vCPU and of one GiB of memory for an hour. */
  vcpuHour: number;
  gibHour: number;
  /** Hours billed per month (730 = 365 × 24 / 12). */
  hoursPerMonth: number;
}

export interface MeshCost {
  instances: number;
  vcpu: number;
  gib: number;
  monthly: number;
  /** The same, spread over the pods the mesh serves. */
  perPod: { vcpu: number; gib: number; monthly: number };
}

export interface CostProjection {
  pods: number;
  sidecars: MeshCost;
  meshlet: MeshCost;
  saved: { vcpu: number; gib: number; monthly: number; fraction: number };
}

function meshCost(instances: number, r: Reservation, pods: number, i: CostInputs): MeshCost {
  const vcpu = (instances * r.cpuMillis) / 1000;
  const gib = (instances * r.memoryMiB) / 1024;
  const monthly = (vcpu * i.vcpuHour + gib * i.gibHour) * i.hoursPerMonth;
  return { instances, vcpu, gib, monthly, perPod: { vcpu: vcpu / pods, gib: gib / pods, monthly: monthly / pods } };
}

export function projectCost(i: CostInputs): CostProjection {
  const pods = i.nodes * i.podsPerNode;
  const sidecars = meshCost(pods, i.sidecar, pods, i);
  const meshlet = meshCost(i.nodes, i.agent, pods, i);
  return {
    pods, sidecars, meshlet,
    saved: {
      vcpu: sidecars.vcpu - meshlet.vcpu,
      gib: sidecars.gib - meshlet.gib,
      monthly: sidecars.monthly - meshlet.monthly,
      fraction: sidecars.monthly > 0 ? 1 - meshlet.monthly / sidecars.monthly : 0,
    },
  };
}

const money = (n: number) => (Math.abs(n) >= 100 ? n.toFixed(0) : n.toFixed(2));
const num = (n: number) => (Number.isInteger(n) ? String(n) : n.toFixed(n >= 10 ? 1 : 3));
/** A request as Kubernetes writes it, rounded for reading (1G is 953.7Mi, not 953.67431640625Mi). */
const quantity = (r: Reservation) => `${+r.cpuMillis.toFixed(1)}m / ${+r.memoryMiB.toFixed(1)}Mi`;

export function formatCost(p: CostProjection, i: CostInputs): string {
  const row = (name: string, requests: Reservation, c: MeshCost) => [
    name, String(c.instances), quantity(requests), num(c.vcpu), num(c.gib), money(c.monthly),
    `${(c.perPod.vcpu * 1000).toFixed(1)}m / ${(c.perPod.gib * 1024).toFixed(1)}Mi`,
  ];
  return [
    `${i.nodes} nodes x ${i.podsPerNode} pods = ${p.pods} pods; ${i.vcpuHour} a vCPU-hour and ${i.gibHour} a GiB-hour ` +
      `(in the prices' currency: the defaults are USD), ${i.hoursPerMonth} hours a month`,
    '',
    table(['MESH', 'PROXIES', 'REQUESTS EACH', 'vCPU', 'GiB', 'PER MONTH', 'PER POD'], [
      row('sidecar per pod', i.sidecar, p.sidecars),
      row('meshlet per node', i.agent, p.meshlet),
    ]),
    p.saved.monthly >= 0
      ? `meshlet reserves ${num(p.saved.vcpu)} vCPU and ${num(p.saved.gib)} GiB less than the sidecars: it saves ` +
        `${money(p.saved.monthly)} a month, ${(p.saved.fraction * 100).toFixed(1)}% of what they cost.`
      // A node with fewer pods than one agent's requests are worth in sidecars: say it plainly.
      : `meshlet reserves ${num(-p.saved.vcpu)} vCPU and ${num(-p.saved.gib)} GiB more than the sidecars: it costs ` +
        `${money(-p.saved.monthly)} a month more, with so few pods per node.`,
    'Requests, not use, take node capacity: to project from measured use instead, pass it as --sidecar-* and --agent-*.',
    '',
  ].join('\n');
}
