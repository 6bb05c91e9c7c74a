// `meshlet cost --agents URL...`: what the mesh cost each namespace, measured. Every agent's
// /metrics is read twice, a window apart: the CPU its workloads caused over the window
// (meshlet_workload_overhead_cpu_seconds_total), their memory share and pods at the end; beside it,
// what sidecars at the given requests would reserve for the same pods (telemetry/overhead.ts says
// how an agent apportions itself).
import { request } from 'undici';
import type { CostInputs, Reservation } from './cost.ts';
import { table } from './status.ts';

/** Per namespace, summed over the agents: CPU seconds so far, memory bytes and pods now. */
export type OverheadSample = Map<string, { cpuSeconds: number; memoryBytes: number; pods: number }>;

const METRICS = {
  meshlet_workload_overhead_cpu_seconds_total: 'cpuSeconds',
  meshlet_workload_overhead_memory_bytes: 'memoryBytes',
  meshlet_workload_pods: 'pods',
} as const;

/** The overhead series of one agent's metrics text, added into `into` by namespace. */
export function addOverhead(text: string, into: OverheadSample): OverheadSample {
  for (const line of text.split('\n')) {
    const m = /^(\w+)\{([^}]*)\} (\S+)$/.exec(line);
    const field = m && METRICS[m[1] as keyof typeof METRICS];
    if (!field) continue;
    const ns = /(?:^|,)namespace="([^"]*)"/.exec(m[2] as string)?.[1] ?? '';
    const value = Number(m[3]);
    if (!Number.isFinite(value)) continue;
    let row = into.get(ns);
    if (!row) into.set(ns, row = { cpuSeconds: 0, memoryBytes: 0, pods: 0 });
    row[field] += value;
  }
  return into;
}

/**
 * Reads every agent's /metrics now, all at once (so the window is the same for each); an agent that
 * does not answer fails the reading, named.
 */
export async function sampleAgents(urls: readonly string[], timeoutMs = 10_000): Promise<OverheadSample> {
  const texts = await Promise.all(urls.map(async (url) => {
    try {
      const r = await request(url, { headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
      const text = await r.body.text();
      if (r.statusCode !== 200) throw new Error(`HTTP ${r.statusCode}`);
      return text;
    } catch (err) {
      throw new Error(`cannot read ${url}: ${(err as Error).message}`);
    }
  }));
  const sample: OverheadSample = new Map();
  for (const text of texts) addOverhead(text, sample);
  return sample;
}

export interface MeasuredRow {
  namespace: string;
  pods: number;
  /** The agents' CPU for this namespace over the window, in cores, and their memory share at its end. */
  mesh: { cores: number; gib: number; monthly: number };
  /** Sidecars at the given requests for the same pods. */
  sidecars: { cores: number; gib: number; monthly: number };
}

export interface Prices {
  vcpuHour: number;
  gibHour: number;
  hoursPerMonth: number;
}

/** Per namespace, from two samples `seconds` apart: the mesh's use against sidecars' reservations. */
export function measuredCost(first: OverheadSample, last: OverheadSample, seconds: number, sidecar: Reservation, prices: Prices): MeasuredRow[] {
  const monthly = (cores: number, gib: number) => (cores * prices.vcpuHour + gib * prices.gibHour) * prices.hoursPerMonth;
  return [...last].sort(([a], [b]) => a.localeCompare(b)).map(([namespace, end]) => {
    const cores = Math.max(0, end.cpuSeconds - (first.get(namespace)?.cpuSeconds ?? 0)) / seconds;
    const gib = end.memoryBytes / 2 ** 30;
    const sc = { cores: (end.pods * sidecar.cpuMillis) / 1000, gib: (end.pods * sidecar.memoryMiB) / 1024 };
    return { namespace, pods: end.pods, mesh: { cores, gib, monthly: monthly(cores, gib) }, sidecars: { ...sc, monthly: monthly(sc.cores, sc.gib) } };
  });
}

export function formatMeasured(rows: readonly MeasuredRow[], seconds: number, agents: number, sidecar: Reservation): string {
  const n = (x: number) => (x >= 10 ? x.toFixed(1) : x.toFixed(3));
  return [
    `${agents} agent(s), measured over ${seconds} s; sidecars at ${sidecar.cpuMillis}m / ${sidecar.memoryMiB}Mi each for the same pods`,
    '',
    table(['NAMESPACE', 'PODS', 'MESH vCPU', 'MESH GiB', 'MESH A MONTH', 'SIDECARS vCPU', 'SIDECARS GiB', 'SIDECARS A MONTH'],
      rows.map((r) => [r.namespace, String(r.pods), n(r.mesh.cores), n(r.mesh.gib), n(r.mesh.monthly), n(r.sidecars.cores), n(r.sidecars.gib), n(r.sidecars.monthly)])),
    'The mesh column is what the agents used for each namespace\'s pods (CPU over the window, memory at its end); the',
    'sidecars column what their requests would reserve. `unattributed`: agents on nodes with no meshed pod.',
    '',
  ].join('\n');
}

/** Reads the agents, waits the window, reads them again, prints per namespace. */
export async function runMeasured(measure: { agents: string[]; windowMs: number }, inputs: CostInputs, json: boolean): Promise<number> {
  const first = await sampleAgents(measure.agents);
  const started = Date.now();
  await new Promise((r) => setTimeout(r, measure.windowMs));
  const last = await sampleAgents(measure.agents);
  const seconds = (Date.now() - started) / 1000;
  const rows = measuredCost(first, last, seconds, inputs.sidecar, inputs);
  process.stdout.write(json ? `${JSON.stringify({ seconds, agents: measure.agents, sidecar: inputs.sidecar, namespaces: rows }, null, 2)}\n`
    : formatMeasured(rows, Math.round(seconds), measure.agents.length, inputs.sidecar));
  return 0;
}
