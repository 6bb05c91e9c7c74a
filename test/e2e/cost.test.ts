// The cost harness's smoke run (the CI check): N = 2 for a few seconds, every figure present
// for every configuration (no mesh, HAProxy sidecars, meshlet sidecars, meshlet per node), the
// report and its charts rendered. Full runs (N = 10, 25, 50) are `npm run bench:cost`, not CI.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runCommand } from '../../src/capture/exec.ts';
import type { CostResults } from '../../bench/cost/report.ts';

const HARNESS = join(import.meta.dirname, '../../bench/cost/harness.ts');

describe('cost harness smoke run', () => {
  let out: string | undefined;
  after(async () => { if (out) await rm(out, { recursive: true, force: true }); });

  it('measures every figure for each configuration at N = 2 and renders the report', async () => {
    out = await mkdtemp(join(tmpdir(), 'meshlet-cost-'));
    const r = await runCommand(process.execPath, [HARNESS, '--pods', '2', '--seconds', '2', '--idle-seconds', '1', '--rate', '50', '--close-rate', '25', '--out', out]);
    assert.equal(r.code, 0, r.stderr);
    const files = await readdir(out);
    const json = files.find((f) => f.endsWith('-cost.json'));
    assert.ok(json, files.join(', '));
    const results = JSON.parse(await readFile(join(out, json), 'utf8')) as CostResults;
    assert.deepEqual(results.runs.map((x) => x.config), ['none', 'haproxy-sidecar', 'meshlet-sidecar', 'meshlet-node']);
    for (const run of results.runs) {
      assert.equal(run.pods, 2);
      for (const v of [run.idle.rssMiB, run.idle.cpuCores, run.load.rssMiB, run.load.pssMiB ?? NaN, run.load.cpuCores, run.load.latencyMs.p50, run.load.latencyMs.p95, run.load.latencyMs.p99, run.firstRequestMs]) {
        assert.ok(Number.isFinite(v) && v >= 0, `${run.config}: ${JSON.stringify(run)}`);
      }
      assert.equal(run.load.errors, 0, run.config);
      assert.equal(run.load.requests, 100);
      const n = run.newConnections!;
      for (const v of [n.rssMiB, n.cpuCores, n.latencyMs.p50, n.latencyMs.p95, n.latencyMs.p99]) assert.ok(Number.isFinite(v) && v >= 0, `${run.config}: ${JSON.stringify(n)}`);
      assert.equal(n.errors, 0, run.config);
      assert.equal(n.requests, 50);
    }
    const mesh = results.runs.find((x) => x.config === 'meshlet-node')!;
    assert.equal(mesh.processes, 2, 'one agent on each node');
    assert.ok(mesh.load.rssMiB > 0 && mesh.load.cpuCores > 0, 'the agents were sampled');
    const sidecars = results.runs.find((x) => x.config === 'haproxy-sidecar')!;
    assert.equal(sidecars.processes, 3, 'a sidecar in each of the 2 pods and in the load generator');
    assert.ok(sidecars.load.rssMiB > 0 && sidecars.load.cpuCores > 0, 'the sidecars were sampled');
    const ours = results.runs.find((x) => x.config === 'meshlet-sidecar')!;
    assert.equal(ours.processes, 3, 'a meshlet sidecar in each of the 2 pods and in the load generator');
    assert.ok(ours.load.rssMiB > 0 && ours.load.cpuCores > 0, 'the meshlet sidecars were sampled');
    assert.ok(ours.load.pssMiB! < ours.load.rssMiB, 'three node processes share their binary\'s pages');
    for (const chart of files.filter((f) => f.endsWith('.svg'))) assert.match(await readFile(join(out, chart), 'utf8'), /^<svg /);
    assert.equal(files.filter((f) => f.endsWith('.svg')).length, 2);
    const md = await readFile(join(out, json.replace('.json', '.md')), 'utf8');
    assert.match(md, /\| meshlet agent per node \| 2 \| 2 \|/);
    assert.match(md, /\| HAProxy sidecar per pod \| 2 \| 3 \|/);
    assert.match(md, /\| meshlet sidecar per pod \| 2 \| 3 \|/);
    assert.match(md, /below 1\/5 of the sum of the meshlet sidecars \| [\d.]+ MiB against/, 'the goal against meshlet sidecars is measured now');
    assert.match(md, /meshlet added p99 no worse than the HAProxy sidecar path on the same run \(keep-alive\) \| \+/, 'the latency goal is measured now');
    assert.match(md, /### A new connection per request \(25 req\/s\)/);
  });
});
