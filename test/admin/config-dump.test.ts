// The config dump, built from an agent's parts without an agent: what `meshlet status` and the
// operators read.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import { configDump } from '../../src/admin/config-dump.ts';
import { Readiness } from '../../src/admin/server.ts';
import { CertificateManager } from '../../src/identity/certs.ts';
import { DataPlane } from '../../src/proxy/data-plane.ts';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import { WorkloadRegistry } from '../../src/workloads/registry.ts';
import { testSettings } from '../support/proxy-context.ts';

describe('config dump', () => {
  it('shows readiness, the workloads with where they run, Services with their endpoints, and the parts\' state', async () => {
    const log = pino({ level: 'silent' });
    const registry = new WorkloadRegistry('node-a');
    const snapshot = parseWorkloadsFile(`trustDomain: td
nodes: [{ name: node-a, ip: 10.0.0.1 }, { name: node-b, ip: 10.0.0.2 }]
workloads:
  - { name: web, namespace: shop, serviceAccount: web, ip: 10.1.0.11, node: node-a, labels: { app: web } }
  - { name: db, namespace: shop, serviceAccount: db, ip: 10.1.0.21, node: node-b, labels: { app: db } }
services:
  - { name: db, namespace: shop, clusterIP: 10.96.0.5, ports: [{ name: sql, port: 5432, targetPort: 5432 }], selector: { app: db } }
policies:
  - { name: no-web, namespace: shop, action: DENY, rules: [{ from: [{ principals: ["spiffe://td/ns/shop/sa/web"] }] }] }
`);
    registry.replace(snapshot);
    const readiness = new Readiness();
    readiness.add({ name: 'certificates', done: () => false });
    const certs = new CertificateManager({ provider: { name: 'none', issue: () => new Promise(() => undefined) }, log });
    const data = new DataPlane(testSettings('node-a', 15008), { log, stallProbe: { probe: () => undefined, reset: (s) => s.destroy() } });
    data.apply({ generation: 1, meshGeneration: 1, mesh: snapshot, identities: [] });
    const dump = configDump({
      node: 'node-a', mode: 'node', phase: 'starting', readiness, registry, workloadSource: { kind: 'file' },
      identityProvider: 'none', probeGate: { vouched: 1 }, heap: { headroomMiB: 32, youngCollectionMiB: 4, growingPercent: undefined, target: undefined },
      workers: 1, maxWorkers: 1, certs, data: data.dump(),
    }) as Record<string, any>;
    try {
      assert.equal(dump.ready, false);
      assert.equal(dump.phase, 'starting');
      assert.deepEqual(dump.pending, ['certificates']);
      assert.equal(dump.trustDomain, 'td');
      assert.deepEqual(dump.workloads.map((w: any) => [w.name, w.local]), [['web', true], ['db', false]]);
      assert.equal(dump.services[0].clusterIP, '10.96.0.5');
      assert.deepEqual(dump.services[0].endpoints.map((e: any) => e.ip), ['10.1.0.21']);
      assert.equal(dump.trustBundle, undefined, 'no bundle yet');
      assert.deepEqual(dump.pools, []);
      assert.deepEqual(dump.connections.open, []);
      assert.deepEqual(dump.probeGate, { vouched: 1 });
      assert.equal(dump.workers, 1);
      assert.deepEqual(dump.policy.policies.map((p: any) => `${p.id}:${p.action}`), ['shop/no-web:DENY'], 'the data plane\'s compiled policies');
    } finally {
      await data.close(() => 0);
      certs.close();
    }
  });
});
