// The cost report's arithmetic, verdicts, goals and charts, from a hand-written results file (the
// harness that measures real ones is not built yet; these figures are made up to exercise the math).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type CostResults, type CostRun, derive, goals, markdown, renderCharts, verdicts } from '../../bench/cost/report.ts';

const run = (config: CostRun['config'], pods: number, loadRss: number, loadCpu: number, p99: number): CostRun => ({
  config, pods, processes: config === 'none' ? 0 : config === 'meshlet-node' ? 1 : pods,
  idle: { rssMiB: loadRss * 0.9, cpuCores: 0.001 },
  load: { rssMiB: loadRss, cpuCores: loadCpu, requests: 10_000, errors: 0, latencyMs: { p50: p99 / 4, p95: p99 / 2, p99 } },
  firstRequestMs: 800,
});

const results: CostResults = {
  date: '2026-11-25', machine: { cpus: 2, memoryGiB: 24, kernel: '6.18', node: 'v24' }, rate: 1000,
  podReservation: { cpuMillis: 250, memoryMiB: 256 },
  runs: [
    run('none', 10, 0, 0, 1.0), run('haproxy-sidecar', 10, 100, 0.3, 3.0), run('meshlet-sidecar', 10, 600, 0.5, 4.0), run('meshlet-node', 10, 60, 0.2, 2.0),
    run('none', 50, 0, 0, 1.2), run('haproxy-sidecar', 50, 500, 0.4, 3.2), run('meshlet-sidecar', 50, 3000, 0.9, 5.2), run('meshlet-node', 50, 80, 0.05, 2.2),
  ],
};

describe('cost report', () => {
  it('derives per-pod figures, CPU per 1000 req/s and latency added against no mesh at the same N', () => {
    const d = derive(results).find((x) => x.config === 'haproxy-sidecar' && x.pods === 10)!;
    assert.equal(d.perPod.loadRssMiB, 10);
    assert.equal(d.perPod.loadCpuMillis, 30);
    assert.equal(d.cpuPer1000Rps, 0.3);
    assert.deepEqual(d.addedMs, { p50: 0.5, p95: 1, p99: 2 });
    assert.equal(derive(results).find((x) => x.config === 'none')!.addedMs, undefined);
  });

  it('judges per-pod overhead against 10% of the pod reservation', () => {
    const v = verdicts(results);
    assert.ok(!v.some((x) => (x.config as string) === 'none'));
    const haproxy10 = v.find((x) => x.config === 'haproxy-sidecar' && x.pods === 10)!;
    assert.equal(haproxy10.cpuShare, 30 / 250);
    assert.equal(haproxy10.overheadOk, false, '30m of 250m is 12%');
    const node50 = v.find((x) => x.config === 'meshlet-node' && x.pods === 50)!;
    assert.equal(node50.overheadOk, true);
    assert.equal(node50.addedP99Ms?.toFixed(2), '1.00');
  });

  it('says where meshlet stands against each goal, and which were not measured', () => {
    const g = goals(results);
    assert.deepEqual(g.map((x) => x.met), [true, true, true, true]);
    assert.match(g[0]!.measured, /80\.0 MiB against 500\.0 MiB \(16\.0%\)/);
    const withPss = goals({ ...results, runs: results.runs.map((x) => (x.pods === 50 && x.config !== 'none' ? { ...x, load: { ...x.load, pssMiB: x.load.rssMiB / 2 } } : x)) });
    assert.match(withPss[1]!.measured, /; PSS 40\.0 against 1500\.0 MiB \(2\.7%\)$/);
    const partial = goals({ ...results, runs: results.runs.filter((x) => x.config !== 'haproxy-sidecar') });
    assert.equal(partial[0]!.met, undefined);
    assert.equal(partial[2]!.met, undefined, 'no HAProxy run, no latency comparison');
    const slow = goals({ ...results, runs: results.runs.map((x) => (x.config === 'meshlet-node' && x.pods === 50 ? { ...x, load: { ...x.load, cpuCores: 0.2 } } : x)) });
    assert.equal(slow[3]!.met, false, '0.2 vCPU per 1000 req/s misses the 0.06 goal');
  });

  it('adds the new-connection-per-request figures and their latency goal when the run has them', () => {
    const withNew: CostResults = {
      ...results, closeRate: 200,
      runs: results.runs.map((x) => ({ ...x, newConnections: { ...x.load, cpuCores: x.load.cpuCores * 2, latencyMs: { p50: 1, p95: 2, p99: x.load.latencyMs.p99 * 3 } } })),
    };
    const g = goals(withNew);
    const row = g.find((x) => x.goal.endsWith('(a new connection per request)'))!;
    // At N = 50: meshlet 3 × 2.2 - 3 × 1.2 = +3.00, HAProxy 3 × 3.2 - 3 × 1.2 = +6.00.
    assert.equal(row.measured, '+3.00 ms against +6.00 ms');
    assert.equal(row.met, true);
    const md = markdown(withNew, {});
    assert.match(md, /### A new connection per request \(200 req\/s\)/);
    assert.match(md, /\| meshlet agent per node \| 50 \| 80\.0 \| 0\.100 \| 0\.500 \| 1\.00 \/ 2\.00 \/ 6\.60 \| \+3\.00 \| 0 \|/);
    assert.equal(goals(results).some((x) => x.goal.includes('new connection')), false, 'no such row without the figures');
  });

  it('renders both charts as SVG and a report that links them', async () => {
    const charts = await renderCharts(results);
    assert.deepEqual(Object.keys(charts).sort(), ['latency', 'memory-vs-pods']);
    for (const svg of Object.values(charts)) {
      assert.match(svg, /^<svg [^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
      assert.match(svg, /meshlet agent per node/, 'the legend names the configurations');
    }
    const md = markdown(results, { 'memory-vs-pods': 'cost-memory.svg', latency: 'cost-latency.svg' });
    assert.match(md, /!\[memory-vs-pods\]\(cost-memory\.svg\)/);
    assert.match(md, /\| HAProxy sidecar per pod \| 10 \| 12\.0% \| 3\.9% \| \*\*no\*\* \|/);
    assert.match(md, /\| meshlet agent CPU per 1000 req\/s at most 0\.06 vCPU \(ztunnel's published figure\) \| 0\.050 vCPU \| yes \|/);
  });
});
