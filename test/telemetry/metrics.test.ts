import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import pino from 'pino';
import { ConnectionTracker } from '../../src/telemetry/connections.ts';
import { MeshMetrics } from '../../src/telemetry/metrics.ts';
import type { Workload } from '../../src/workloads/model.ts';
import { parseMetrics, sum } from '../support/prometheus.ts';

const w = (name: string): Workload => ({ name: `${name}-1`, namespace: 'shop', serviceAccount: name, ip: '10.0.0.1', node: 'n', captured: true, spiffeId: `spiffe://td/ns/shop/sa/${name}`, labels: {}, workload: name });

describe('TCP metrics', () => {
  it('show an open connection\'s bytes at each scrape and count every byte once, at the workload level', async () => {
    const metrics = new MeshMetrics();
    const tracker = new ConnectionTracker(pino({ level: 'silent' }), metrics);
    const scrape = async () => parseMetrics((await metrics.text()).body);
    const where = { reporter: 'source', source_workload: 'web', destination_workload: 'db', connection_security_policy: 'mutual_tls' };
    const c = tracker.open('outbound', '10.0.0.1');
    c.set({ src: w('web'), dst: w('db'), route: 'tunnel', mutualTls: true });
    c.established();
    c.info.bytesSent += 1000;
    let m = await scrape();
    assert.equal(sum(m, 'meshlet_tcp_sent_bytes_total', where), 1000, 'an open connection shows its bytes');
    assert.equal(sum(m, 'meshlet_tcp_connections_opened_total', where), 1);
    assert.equal(sum(m, 'meshlet_tcp_connections_closed_total', where), 0);
    c.info.bytesSent += 500;
    c.info.bytesReceived += 42;
    c.close({});
    m = await scrape();
    assert.equal(sum(m, 'meshlet_tcp_sent_bytes_total', where), 1500);
    assert.equal(sum(m, 'meshlet_tcp_received_bytes_total', where), 42);
    assert.equal(sum(m, 'meshlet_tcp_connections_closed_total', where), 1);
    // A second pod of the same workload adds to the same series.
    const d = tracker.open('outbound', '10.0.0.2');
    d.set({ src: { ...w('web'), name: 'web-2' }, dst: w('db'), route: 'tunnel', mutualTls: true });
    d.established();
    d.close({});
    assert.equal(sum(await scrape(), 'meshlet_tcp_connections_opened_total', where), 2);
    assert.equal(sum(await scrape(), 'meshlet_tcp_sent_bytes_total', where), 1500, 'scraping again adds nothing');
  });
  it('say which meshlet and which Node each agent runs (meshlet_build_info)', async () => {
    const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
    const m = parseMetrics((await new MeshMetrics().text()).body);
    assert.equal(sum(m, 'meshlet_build_info', { version, node_version: process.version }), 1);
  });

  it('say whether the agent is ready, and what it still waits for (meshlet_agent_ready)', async () => {
    const metrics = new MeshMetrics();
    let pending = ['certificates', 'listening'];
    metrics.readFrom({ pendingTasks: () => pending });
    let m = parseMetrics((await metrics.text()).body);
    assert.equal(sum(m, 'meshlet_agent_ready', { pending: 'certificates' }), 0);
    assert.equal(sum(m, 'meshlet_agent_ready', { pending: 'listening' }), 0);
    assert.equal(m.filter((x) => x.name === 'meshlet_agent_ready').length, 2);
    pending = [];
    m = parseMetrics((await metrics.text()).body);
    assert.deepEqual(m.filter((x) => x.name === 'meshlet_agent_ready').map((x) => [x.labels.pending, x.value]), [['', 1]]);
  });
});
