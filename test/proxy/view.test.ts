// Several data planes' views merged into the one the control plane shows (src/proxy/view.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mergeDumps, mergeGauges, type DataPlaneDump } from '../../src/proxy/view.ts';

const dump = (worker: number, over: Partial<DataPlaneDump> = {}): DataPlaneDump => ({
  pools: [{ key: `k${worker}`, streams: worker + 1, ageMs: 1, peer: 'p' }],
  openConnections: { outbound: worker + 1, inbound: 1 },
  ejected: [{ namespace: 'shop', name: 'api', ips: worker === 0 ? ['10.0.0.3'] : ['10.0.0.3', '10.0.0.4'] }],
  tunnelQueuedBytes: 100,
  policy: { generation: 1, rootNamespace: 'meshlet-system', mtls: {}, policies: [], decisions: [{ action: 'allow', policy: 'shop/p', count: worker + 1 }] },
  endpoints: { 'shop/api': [{ ip: '10.0.0.3', ready: true, ports: {}, open: worker, consecutiveFailures: worker, ejections: 1, ...(worker === 1 ? { ejectedUntil: 'later', lastError: 'refused' } : {}) }] },
  connections: { totals: { opened: 5, closed: 4, failed: worker, open: 1 }, open: [{ id: 1, direction: 'outbound', sourceIp: '10.0.0.1', traceId: 't', startedAt: 0, reporter: 'source', mutualTls: true, bytesSent: 0, bytesReceived: 0, wakeups: 0 }] },
  ...over,
});

describe('merged data-plane views', () => {
  it('adds counts, unites ejected endpoints, and names the worker of each entry', () => {
    const g = mergeGauges([dump(0), dump(1)]);
    assert.deepEqual(g.openConnections, { outbound: 3, inbound: 2 });
    assert.deepEqual(g.ejected, [{ namespace: 'shop', name: 'api', ips: ['10.0.0.3', '10.0.0.4'] }], 'an endpoint two workers ejected is out once');
    assert.equal(g.tunnelQueuedBytes, 200);
    assert.deepEqual(g.pools.map((p) => [p.key, p.worker]), [['k0', 0], ['k1', 1]]);
  });

  it('adds decisions, totals and endpoint counts; an endpoint is ejected where any worker ejected it', () => {
    const d = mergeDumps([dump(0), dump(1)]);
    assert.deepEqual(d.policy.decisions, [{ action: 'allow', policy: 'shop/p', count: 3 }]);
    assert.deepEqual(d.connections.totals, { opened: 10, closed: 8, failed: 1, open: 2 });
    assert.deepEqual(d.connections.open.map((c) => c.worker), [0, 1]);
    const [api] = d.endpoints['shop/api']!;
    assert.deepEqual({ open: api!.open, failures: api!.consecutiveFailures, ejections: api!.ejections, until: api!.ejectedUntil, lastError: api!.lastError },
      { open: 1, failures: 1, ejections: 2, until: 'later', lastError: 'refused' });
  });

  it('passes one data plane\'s view through as it is', () => {
    const one = dump(0);
    assert.equal(mergeDumps([one]), one);
  });
});
