// The agent's CPU and memory apportioned to the workloads it serves (telemetry/overhead.ts): by
// what each caused, and summed, the agent's own totals.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import { ConnectionTracker } from '../../src/telemetry/connections.ts';
import { MeshMetrics } from '../../src/telemetry/metrics.ts';
import { OverheadAccountant, type WorkloadUnits } from '../../src/telemetry/overhead.ts';
import { TcpSeriesBook } from '../../src/telemetry/tcp-series.ts';
import type { Workload } from '../../src/workloads/model.ts';
import { parseMetrics, sum } from '../support/prometheus.ts';

const prices = { connection: 1e-3, handshake: 2e-3, byte: 1e-9, wakeup: 1e-4 };
const units = (o: Partial<WorkloadUnits>): WorkloadUnits => ({ opened: 0, handshakes: 0, bytes: 0, wakeups: 0, ...o });
const total = (m: ReadonlyMap<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);

describe('overhead per workload', () => {
  it('charges each workload its priced traffic and spreads the rest evenly: the sum is the CPU used', () => {
    let cpu = 10;
    const a = new OverheadAccountant({ cpuSeconds: () => cpu, rssBytes: () => 0, localWorkloads: () => ['shop/web', 'shop/db'], prices });
    cpu += 1; // 1 s used; web caused 0.2 s of priced work, db 0.1 s
    a.account(new Map([['shop/web', units({ opened: 50, handshakes: 25, wakeups: 1000 })], ['shop/db', units({ bytes: 1e8 })]]));
    assert.ok(Math.abs(a.cpu.get('shop/web')! - (0.2 + 0.35)) < 1e-9, String(a.cpu.get('shop/web')));
    assert.ok(Math.abs(a.cpu.get('shop/db')! - (0.1 + 0.35)) < 1e-9, String(a.cpu.get('shop/db')));
    assert.ok(Math.abs(total(a.cpu) - 1) < 1e-9);
  });

  it('scales the priced shares down when the traffic priced more than was used', () => {
    let cpu = 0;
    const a = new OverheadAccountant({ cpuSeconds: () => cpu, rssBytes: () => 0, localWorkloads: () => ['shop/web', 'shop/db', 'shop/idle'], prices });
    cpu = 0.3;
    a.account(new Map([['shop/web', units({ opened: 300 })], ['shop/db', units({ opened: 100 })]]));
    assert.ok(Math.abs(a.cpu.get('shop/web')! - 0.225) < 1e-9);
    assert.ok(Math.abs(a.cpu.get('shop/db')! - 0.075) < 1e-9);
    assert.equal(a.cpu.get('shop/idle'), undefined, 'no traffic, no base left to spread');
  });

  it('charges a node with no local workload to unattributed', () => {
    let cpu = 0;
    const a = new OverheadAccountant({ cpuSeconds: () => cpu, rssBytes: () => 0, localWorkloads: () => [], prices });
    cpu = 0.5;
    a.account(new Map());
    assert.deepEqual([...a.cpu], [['unattributed/unattributed', 0.5]]);
  });

  it('splits memory: the idle part evenly, the rest by open connections; the sum is the RSS', () => {
    let rss = 80e6;
    const a = new OverheadAccountant({ cpuSeconds: () => 0, rssBytes: () => rss, localWorkloads: () => ['shop/web', 'shop/db'], prices });
    assert.deepEqual([...a.memory(new Map())], [['shop/web', 40e6], ['shop/db', 40e6]]);
    rss = 120e6;
    const m = a.memory(new Map([['shop/web', 3], ['shop/db', 1]]));
    assert.equal(m.get('shop/web'), 40e6 + 30e6);
    assert.equal(m.get('shop/db'), 40e6 + 10e6);
    assert.equal(total(m), rss);
  });
});

describe('overhead metrics', () => {
  it('charge each connection to the workload on the reporter\'s side: handshakes, bytes, wake-ups, open connections, a worker\'s batch too', () => {
    const book = new TcpSeriesBook();
    const c = { reporter: 'source' as const, src: w('web'), dst: w('db'), mutualTls: true, bytesSent: 0, bytesReceived: 0, wakeups: 0, handshakes: 1 };
    book.opened(c);
    c.bytesSent += 300;
    c.bytesReceived += 700;
    c.wakeups += 4;
    assert.deepEqual([...book.openByWorkload()], [['shop/web', 1]]);
    assert.deepEqual([...book.takeUnits()], [['shop/web', { opened: 1, handshakes: 1, bytes: 1000, wakeups: 4 }]]);
    // The destination's side of a worker's batch: charged to db, the pod it serves.
    const worker = new TcpSeriesBook();
    const d = { ...c, reporter: 'destination' as const, bytesSent: 0, bytesReceived: 0, wakeups: 0 };
    worker.opened(d);
    d.bytesSent = 50;
    d.wakeups = 2;
    worker.closed(d);
    for (const amounts of worker.takeAll()) book.add(amounts);
    book.closed(c);
    assert.deepEqual([...book.takeUnits()], [['shop/db', { opened: 1, handshakes: 1, bytes: 50, wakeups: 2 }], ['shop/web', { opened: 0, handshakes: 0, bytes: 0, wakeups: 0 }]]);
    assert.deepEqual([...book.openByWorkload()], [], 'every connection closed');
  });

  const w = (name: string, ns = 'shop'): Workload => ({ name: `${name}-1`, namespace: ns, serviceAccount: name, ip: '10.0.0.1', node: 'n', captured: true, spiffeId: `spiffe://td/ns/${ns}/sa/${name}`, labels: {}, workload: name });

  it('sum, over the workloads, to the agent\'s own CPU seconds (within 5%), the busier workload charged more', async () => {
    const metrics = new MeshMetrics();
    metrics.readFrom({ localWorkloads: () => ['shop/web', 'shop/db', 'ops/batch'] });
    const tracker = new ConnectionTracker(pino({ level: 'silent' }), metrics);
    const scrape = async () => parseMetrics((await metrics.text()).body);
    const overheadCpu = (m: ReturnType<typeof parseMetrics>, labels = {}) => sum(m, 'meshlet_workload_overhead_cpu_seconds_total', labels);
    const before = await scrape();
    // web opens 200 connections of many small wakeups; batch one bulk connection; db only answers.
    for (let i = 0; i < 200; i++) {
      const c = tracker.open('outbound', '10.0.0.1');
      c.set({ src: w('web'), dst: w('db'), route: 'tunnel', mutualTls: true });
      c.established();
      c.info.bytesSent += 4000;
      c.info.wakeups += 40;
      c.close({});
    }
    const bulk = tracker.open('outbound', '10.0.0.3');
    bulk.set({ src: w('batch', 'ops'), dst: w('db'), route: 'tunnel', mutualTls: true });
    bulk.established();
    bulk.info.bytesSent += 50e6;
    bulk.info.wakeups += 800;
    // The agent's CPU meanwhile: 300 ms of work the scrape must account for.
    const until = Date.now() + 300;
    while (Date.now() < until) Math.sqrt(Math.random());
    const after = await scrape();
    const agent = sum(after, 'process_cpu_seconds_total', {}) - sum(before, 'process_cpu_seconds_total', {});
    const apportioned = overheadCpu(after) - overheadCpu(before);
    assert.ok(agent > 0.2, `the agent used ${agent} s`);
    assert.ok(Math.abs(apportioned - agent) <= 0.05 * agent, `apportioned ${apportioned} s of the agent's ${agent} s`);
    const [web, batch, db] = [overheadCpu(after, { workload: 'web' }), overheadCpu(after, { workload: 'batch', namespace: 'ops' }), overheadCpu(after, { workload: 'db' })];
    assert.ok(web > db && batch > db, JSON.stringify({ web, batch, db }));
    // Memory: the open bulk connection is batch's; summed, the agent's RSS.
    const rss = sum(after, 'process_resident_memory_bytes', {});
    const memory = sum(after, 'meshlet_workload_overhead_memory_bytes', {});
    assert.ok(Math.abs(memory - rss) <= 0.05 * rss, `${memory} of ${rss}`);
    bulk.close({});
  });
});
