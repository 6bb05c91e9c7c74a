// `meshlet cost --agents`: the agents' apportioned overhead read twice, a window apart, per
// namespace, against sidecars for the same pods. The agents here are real MeshMetrics registries
// served over HTTP on loopback.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { loadCostConfig } from '../src/config/commands.ts';
import { addOverhead, measuredCost, sampleAgents, formatMeasured } from '../src/cost-measured.ts';
import { MeshMetrics } from '../src/telemetry/metrics.ts';

const sidecar = { cpuMillis: 100, memoryMiB: 128 };
const prices = { vcpuHour: 0.033, gibHour: 0.0045, hoursPerMonth: 730 };

describe('meshlet cost --agents', () => {
  const servers: http.Server[] = [];
  const urls: string[] = [];

  before(async () => {
    // Two nodes: node 1 serves 2 web pods and 1 db pod, node 2 one batch pod of another namespace.
    for (const local of [['shop/web', 'shop/web', 'shop/db'], ['ops/batch']]) {
      const metrics = new MeshMetrics();
      metrics.readFrom({ localWorkloads: () => local });
      const server = http.createServer((_req, res) => void metrics.text().then((t) => res.end(t.body)));
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      servers.push(server);
      urls.push(`http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`);
    }
  });
  after(() => { for (const s of servers) s.close(); });

  it('reads each namespace\'s pods, CPU and memory from every agent, and sets them against sidecars', async () => {
    const first = await sampleAgents(urls);
    const started = Date.now();
    const until = started + 300;
    while (Date.now() < until) Math.sqrt(Math.random());
    const last = await sampleAgents(urls);
    const seconds = (Date.now() - started) / 1000;
    assert.deepEqual([...last.keys()].sort(), ['ops', 'shop']);
    assert.equal(last.get('shop')?.pods, 3);
    assert.equal(last.get('ops')?.pods, 1);
    const rows = measuredCost(first, last, seconds, sidecar, prices);
    const shop = rows.find((r) => r.namespace === 'shop')!;
    assert.deepEqual([shop.sidecars.cores, shop.sidecars.gib], [0.3, 0.375]);
    // Both registries live in this process, so each saw all of its CPU: the burn, apportioned.
    assert.ok(shop.mesh.cores > 0.3, JSON.stringify(shop));
    assert.ok(shop.mesh.gib > 0 && shop.mesh.monthly > 0);
    const text = formatMeasured(rows, Math.round(seconds), urls.length, sidecar);
    assert.match(text, /^ {2}shop +3 +/m);
    assert.match(text, /2 agent\(s\)/);
  });

  it('names the agent it could not read', async () => {
    await assert.rejects(sampleAgents([urls[0]!, 'http://127.0.0.1:9/metrics'], 2_000), /cannot read http:\/\/127\.0\.0\.1:9\/metrics/);
  });

  it('adds only the overhead series, by namespace, whatever else the text holds', () => {
    const s = addOverhead([
      '# HELP meshlet_workload_pods x', 'meshlet_workload_pods{workload="web",namespace="shop"} 2',
      'meshlet_workload_overhead_cpu_seconds_total{workload="web",namespace="shop"} 1.5',
      'meshlet_tcp_sent_bytes_total{namespace="shop"} 99', 'meshlet_workload_overhead_memory_bytes{workload="db",namespace="shop"} NaN',
    ].join('\n'), new Map());
    assert.deepEqual([...s], [['shop', { cpuSeconds: 1.5, memoryBytes: 0, pods: 2 }]]);
  });

  it('takes agents and a window from the flags, and refuses what is not a URL', () => {
    assert.deepEqual(loadCostConfig(['--agents', 'http://10.0.0.1:15020/metrics', '--window', '2m']).measure, { agents: ['http://10.0.0.1:15020/metrics'], windowMs: 120_000 });
    assert.equal(loadCostConfig([]).measure, undefined);
    assert.throws(() => loadCostConfig(['--agents', 'node-a:15020']), /--agents: "node-a:15020" is not an http\(s\) URL/);
  });
});
