// The cost comparison's report: from the raw figures of a run (bench/results/<date>-cost.json) to
// derived figures, the verdict table, where meshlet stands against its goals, SVG charts (vega-lite,
// rendered headless by vega) and the markdown that shows them. Pure apart from the SVG rendering;
// the harness that measures the figures writes the JSON and calls this.
import * as vega from 'vega';
import * as vl from 'vega-lite';

export const CONFIGS = ['none', 'haproxy-sidecar', 'meshlet-sidecar', 'meshlet-node'] as const;
export type MeshConfig = (typeof CONFIGS)[number];

export const CONFIG_LABELS: Record<MeshConfig, string> = {
  'none': 'no mesh',
  'haproxy-sidecar': 'HAProxy sidecar per pod',
  'meshlet-sidecar': 'meshlet sidecar per pod',
  'meshlet-node': 'meshlet agent per node',
};

/** What the mesh components of one configuration used, all processes together. */
export interface Usage {
  rssMiB: number;
  /**
   * Proportional set size: memory shared between the processes (the same binary's pages) counted
   * once in all, not once per process as RSS counts it. Absent in results from before it was measured.
   */
  pssMiB?: number;
  /** Cores used on average over the sampling window. */
  cpuCores: number;
}

export type LoadFigures = Usage & { requests: number; errors: number; latencyMs: { p50: number; p95: number; p99: number } };

export interface CostRun {
  config: MeshConfig;
  pods: number;
  /** Mesh processes (0 for no mesh). */
  processes: number;
  idle: Usage;
  /** At `rate` on keep-alive connections. */
  load: LoadFigures;
  /** At `closeRate` with a new connection per request (absent in results from before it was measured). */
  newConnections?: LoadFigures;
  /** From a pod's start to its first successful request through the mesh. */
  firstRequestMs: number;
}

export interface CostResults {
  date: string;
  machine: { cpus: number; memoryGiB: number; kernel: string; node: string };
  /** Aggregate request rate under load (1 KB request and response) on keep-alive connections, spread over the pods. */
  rate: number;
  /** The same with a new connection per request. */
  closeRate?: number;
  /** The typical pod reservation the overhead is judged against. */
  podReservation: { cpuMillis: number; memoryMiB: number };
  runs: CostRun[];
}

export interface Derived {
  config: MeshConfig;
  pods: number;
  perPod: { idleRssMiB: number; loadRssMiB: number; loadCpuMillis: number };
  /** Cores per 1000 req/s under load. */
  cpuPer1000Rps: number;
  /** Latency added against no mesh at the same pod count (ms). */
  addedMs?: { p50: number; p95: number; p99: number };
}

export function derive(r: CostResults): Derived[] {
  return r.runs.map((run) => {
    const none = r.runs.find((x) => x.config === 'none' && x.pods === run.pods);
    return {
      config: run.config,
      pods: run.pods,
      perPod: { idleRssMiB: run.idle.rssMiB / run.pods, loadRssMiB: run.load.rssMiB / run.pods, loadCpuMillis: (run.load.cpuCores * 1000) / run.pods },
      cpuPer1000Rps: r.rate > 0 ? (run.load.cpuCores / r.rate) * 1000 : 0,
      ...(none && run.config !== 'none' ? { addedMs: {
        p50: run.load.latencyMs.p50 - none.load.latencyMs.p50,
        p95: run.load.latencyMs.p95 - none.load.latencyMs.p95,
        p99: run.load.latencyMs.p99 - none.load.latencyMs.p99,
      } } : {}),
    };
  });
}

export interface Verdict {
  config: MeshConfig;
  pods: number;
  /** Per-pod overhead as a share of the pod reservation, CPU and memory, under load. */
  cpuShare: number;
  memoryShare: number;
  overheadOk: boolean;
  addedP95Ms?: number;
  addedP99Ms?: number;
}

/** The usual sidecar criterion: per-pod mesh overhead under 10% of a pod's reservation. */
export function verdicts(r: CostResults, limit = 0.1): Verdict[] {
  return derive(r).filter((d) => d.config !== 'none').map((d) => {
    const cpuShare = d.perPod.loadCpuMillis / r.podReservation.cpuMillis;
    const memoryShare = d.perPod.loadRssMiB / r.podReservation.memoryMiB;
    return {
      config: d.config, pods: d.pods, cpuShare, memoryShare, overheadOk: cpuShare < limit && memoryShare < limit,
      ...(d.addedMs ? { addedP95Ms: d.addedMs.p95, addedP99Ms: d.addedMs.p99 } : {}),
    };
  });
}

export interface Goal {
  goal: string;
  measured: string;
  met: boolean | undefined;
}

/** Where meshlet's node agent stands against the goals (undefined: not measured in this run). */
export function goals(r: CostResults): Goal[] {
  const maxPods = Math.max(...r.runs.map((x) => x.pods));
  const at = (config: MeshConfig, pods = maxPods) => r.runs.find((x) => x.config === config && x.pods === pods);
  const node = at('meshlet-node');
  const out: Goal[] = [];
  for (const [sidecar, kind] of [['haproxy-sidecar', 'HAProxy'], ['meshlet-sidecar', 'meshlet']] as const) {
    const s = at(sidecar);
    out.push({
      goal: `meshlet node agent total RSS at N = ${maxPods} below 1/5 of the sum of the ${kind} sidecars`,
      measured: node && s ? `${node.load.rssMiB.toFixed(1)} MiB against ${s.load.rssMiB.toFixed(1)} MiB (${((node.load.rssMiB / s.load.rssMiB) * 100).toFixed(1)}%)` +
        (node.load.pssMiB && s.load.pssMiB ? `; PSS ${node.load.pssMiB.toFixed(1)} against ${s.load.pssMiB.toFixed(1)} MiB (${((node.load.pssMiB / s.load.pssMiB) * 100).toFixed(1)}%)` : '') : 'not measured',
      met: node && s ? node.load.rssMiB < s.load.rssMiB / 5 : undefined,
    });
  }
  const d = derive(r);
  const added = (config: MeshConfig) => d.find((x) => x.config === config && x.pods === maxPods)?.addedMs?.p99;
  const [nodeP99, haproxyP99] = [added('meshlet-node'), added('haproxy-sidecar')];
  out.push({
    goal: `meshlet added p99 no worse than the HAProxy sidecar path on the same run${r.closeRate ? ' (keep-alive)' : ''}`,
    measured: nodeP99 !== undefined && haproxyP99 !== undefined ? `+${nodeP99.toFixed(2)} ms against +${haproxyP99.toFixed(2)} ms` : 'not measured',
    met: nodeP99 !== undefined && haproxyP99 !== undefined ? nodeP99 <= haproxyP99 : undefined,
  });
  if (r.closeRate) {
    const addedNew = (config: MeshConfig) => {
      const run = at(config);
      const none = at('none');
      return run?.newConnections && none?.newConnections ? run.newConnections.latencyMs.p99 - none.newConnections.latencyMs.p99 : undefined;
    };
    const [nodeNew, haproxyNew] = [addedNew('meshlet-node'), addedNew('haproxy-sidecar')];
    out.push({
      goal: 'meshlet added p99 no worse than the HAProxy sidecar path on the same run (a new connection per request)',
      measured: nodeNew !== undefined && haproxyNew !== undefined ? `+${nodeNew.toFixed(2)} ms against +${haproxyNew.toFixed(2)} ms` : 'not measured',
      met: nodeNew !== undefined && haproxyNew !== undefined ? nodeNew <= haproxyNew : undefined,
    });
  }
  const cpu = d.find((x) => x.config === 'meshlet-node' && x.pods === maxPods)?.cpuPer1000Rps;
  out.push({
    goal: 'meshlet agent CPU per 1000 req/s at most 0.06 vCPU (ztunnel\'s published figure)',
    measured: cpu !== undefined ? `${cpu.toFixed(3)} vCPU` : 'not measured',
    met: cpu !== undefined ? cpu <= 0.06 : undefined,
  });
  return out;
}

/** vega-lite specs of the report's charts. */
export function chartSpecs(r: CostResults): Record<string, vl.TopLevelSpec> {
  const label = (c: MeshConfig) => CONFIG_LABELS[c];
  const maxPods = Math.max(...r.runs.map((x) => x.pods));
  return {
    'memory-vs-pods': {
      title: 'Mesh memory under load (all mesh processes, MiB) by pods on the node',
      width: 420, height: 260,
      data: { values: r.runs.filter((x) => x.config !== 'none').map((x) => ({ pods: x.pods, rss: x.load.rssMiB, config: label(x.config) })) },
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'pods', type: 'quantitative', title: 'pods' },
        y: { field: 'rss', type: 'quantitative', title: 'RSS (MiB)' },
        color: { field: 'config', type: 'nominal', title: null },
      },
    },
    'latency': {
      title: `Latency under load at N = ${maxPods} (ms)`,
      width: 420, height: 260,
      data: { values: r.runs.filter((x) => x.pods === maxPods).flatMap((x) => (['p50', 'p95', 'p99'] as const).map((p) => ({ config: label(x.config), percentile: p, ms: x.load.latencyMs[p] }))) },
      mark: 'bar',
      encoding: {
        x: { field: 'percentile', type: 'nominal', title: null },
        xOffset: { field: 'config' },
        y: { field: 'ms', type: 'quantitative', title: 'ms' },
        color: { field: 'config', type: 'nominal', title: null },
      },
    },
  };
}

/** Each chart as an SVG document. */
export async function renderCharts(r: CostResults): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const [name, spec] of Object.entries(chartSpecs(r))) {
    const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
    out[name] = await view.toSVG();
    view.finalize();
  }
  return out;
}

/** The runs' figures with a new connection per request, when the run measured them. */
function newConnectionsTable(r: CostResults): string[] {
  if (!r.closeRate || !r.runs.some((x) => x.newConnections)) return [];
  return [
    `### A new connection per request (${r.closeRate} req/s)`,
    '',
    '| configuration | pods | load RSS MiB | load CPU cores | vCPU per 1000 req/s | p50 / p95 / p99 ms | added p99 ms | errors |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.runs.flatMap((run) => {
      const n = run.newConnections;
      if (!n) return [];
      const none = r.runs.find((x) => x.config === 'none' && x.pods === run.pods)?.newConnections;
      const l = n.latencyMs;
      return [`| ${CONFIG_LABELS[run.config]} | ${run.pods} | ${n.rssMiB.toFixed(1)} | ${n.cpuCores.toFixed(3)} | ${((n.cpuCores / (r.closeRate as number)) * 1000).toFixed(3)} | ` +
        `${l.p50.toFixed(2)} / ${l.p95.toFixed(2)} / ${l.p99.toFixed(2)} | ${run.config === 'none' || !none ? '-' : ms(l.p99 - none.latencyMs.p99)} | ${n.errors} |`];
    }),
    '',
  ];
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const ms = (x: number | undefined) => (x === undefined ? '-' : `${x >= 0 ? '+' : ''}${x.toFixed(2)}`);

/** The markdown report; `charts` maps chart names to the files (relative paths) they were written to. */
export function markdown(r: CostResults, charts: Record<string, string>): string {
  const d = derive(r);
  const lines = [
    `# Cost: sidecars against one meshlet agent per node (${r.date})`,
    '',
    `Machine: ${r.machine.cpus} CPUs, ${r.machine.memoryGiB} GiB, kernel ${r.machine.kernel}, Node ${r.machine.node}. Load: ${r.rate} req/s of 1 KB requests and responses spread over the pods` +
      (r.closeRate ? ` on keep-alive connections (one per pod); then ${r.closeRate} req/s with a new connection per request (below).` : '.'),
    '',
    'RSS counts every page a process maps, so pages N processes share (one binary) count N times; PSS counts shared pages once in all. The goals are stated in RSS.',
    '',
    '| configuration | pods | mesh processes | idle RSS MiB | idle CPU cores | load RSS MiB | load PSS MiB | load CPU cores | per pod RSS MiB | per pod CPU m | vCPU per 1000 req/s | p50 / p95 / p99 ms | added p99 ms | first request ms | errors |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...r.runs.map((run, i) => {
      const x = d[i] as Derived;
      const l = run.load.latencyMs;
      return `| ${CONFIG_LABELS[run.config]} | ${run.pods} | ${run.processes} | ${run.idle.rssMiB.toFixed(1)} | ${run.idle.cpuCores.toFixed(3)} | ${run.load.rssMiB.toFixed(1)} | ${run.load.pssMiB?.toFixed(1) ?? '-'} | ${run.load.cpuCores.toFixed(3)} | ` +
        `${x.perPod.loadRssMiB.toFixed(2)} | ${x.perPod.loadCpuMillis.toFixed(1)} | ${x.cpuPer1000Rps.toFixed(3)} | ${l.p50.toFixed(2)} / ${l.p95.toFixed(2)} / ${l.p99.toFixed(2)} | ${ms(x.addedMs?.p99)} | ${run.firstRequestMs.toFixed(0)} | ${run.load.errors} |`;
    }),
    '',
    ...newConnectionsTable(r),
    ...Object.entries(charts).map(([name, file]) => `![${name}](${file})`),
    '',
    `## Verdicts (per-pod overhead under 10% of a ${r.podReservation.cpuMillis}m / ${r.podReservation.memoryMiB} Mi pod reservation)`,
    '',
    '| configuration | pods | CPU share | memory share | under 10% | added p95 ms | added p99 ms |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...verdicts(r).map((v) => `| ${CONFIG_LABELS[v.config]} | ${v.pods} | ${pct(v.cpuShare)} | ${pct(v.memoryShare)} | ${v.overheadOk ? 'yes' : '**no**'} | ${ms(v.addedP95Ms)} | ${ms(v.addedP99Ms)} |`),
    '| chaos: agent SIGKILLed | - | - | - | - | - | fails closed, pods not ready within 10 s: test/e2e/lifecycle.test.ts |',
    '| rollout: agent upgraded under load | - | - | - | - | - | zero failed requests: test/e2e/lifecycle.test.ts, bench/reliability.ts |',
    '',
    '## Goals',
    '',
    '| goal | measured | met |',
    '| --- | --- | --- |',
    ...goals(r).map((g) => `| ${g.goal} | ${g.measured} | ${g.met === undefined ? 'not measured' : g.met ? 'yes' : '**no**'} |`),
    '',
  ];
  return lines.join('\n');
}
