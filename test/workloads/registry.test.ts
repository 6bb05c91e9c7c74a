import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import { DEPARTED_MS, WorkloadRegistry } from '../../src/workloads/registry.ts';

describe('workload registry', () => {
  it('is not synced before the first snapshot, and finds workloads by (mapped) IP after', () => {
    const r = new WorkloadRegistry('n1');
    assert.equal(r.synced, false);
    assert.equal(r.findWorkload('10.0.0.1'), undefined);
    r.replace(parseWorkloadsFile(`trustDomain: td
nodes: [{ name: n1, ip: 10.1.0.1 }, { name: n2, ip: 10.1.0.2 }]
workloads:
  - { name: a, namespace: x, serviceAccount: a, ip: 10.0.0.1, node: n1 }
  - { name: b, namespace: x, serviceAccount: b, ip: 10.0.0.2, node: n2 }
  - { name: c, namespace: x, serviceAccount: c, ip: 10.0.0.3, node: n1, captured: false }
`));
    assert.equal(r.synced, true);
    assert.equal(r.findWorkload('::ffff:10.0.0.1')?.name, 'a');
    assert.deepEqual(r.localCaptured().map((w) => w.name), ['a']);
    assert.equal(r.isLocal(r.findWorkload('10.0.0.2')!), false);
    assert.equal(r.trustDomain, 'td');
  });

  it('answers whether an address is in the pod ranges the snapshot gives (none given: never)', () => {
    const r = new WorkloadRegistry('n1');
    const doc = parseWorkloadsFile('trustDomain: td\nnodes: [{ name: n1, ip: 10.1.0.1 }]\nworkloads: []\n');
    r.replace(doc);
    assert.equal(r.inPodRanges('10.244.1.9'), false);
    assert.deepEqual([...r.podRanges], []);
    r.replace({ ...doc, podRanges: ['10.244.1.0/24', '10.244.2.0/24'] });
    assert.equal(r.inPodRanges('10.244.1.9'), true);
    assert.equal(r.inPodRanges('::ffff:10.244.2.200'), true);
    assert.equal(r.inPodRanges('10.244.3.1'), false);
    assert.deepEqual([...r.podRanges], ['10.244.1.0/24', '10.244.2.0/24']);
  });

  it('in sidecar mode serves its one workload and treats every other, on its node too, as remote', () => {
    const r = new WorkloadRegistry('n1', { namespace: 'x', name: 'b' });
    r.replace(parseWorkloadsFile(`trustDomain: td
nodes: [{ name: n1, ip: 10.1.0.1 }]
workloads:
  - { name: a, namespace: x, serviceAccount: a, ip: 10.0.0.1, node: n1 }
  - { name: b, namespace: x, serviceAccount: b, ip: 10.0.0.2, node: n1 }
  - { name: b, namespace: y, serviceAccount: b, ip: 10.0.0.3, node: n1 }
`));
    assert.deepEqual(r.localCaptured().map((w) => w.ip), ['10.0.0.2']);
    assert.equal(r.isLocal(r.findWorkload('10.0.0.1')!), false);
    assert.equal(r.isLocal(r.findWorkload('10.0.0.3')!), false);
    assert.equal(r.nodeName, 'n1');
  });

  it('lists the destinations capture redirects: captured pods anywhere and Services with endpoints in the mesh', () => {
    const doc = `trustDomain: td
nodes: [{ name: n1, ip: 10.1.0.1 }, { name: n2, ip: 10.1.0.2 }]
workloads:
  - { name: a, namespace: x, serviceAccount: a, ip: 10.0.0.1, node: n1, labels: { app: api } }
  - { name: b, namespace: x, serviceAccount: b, ip: 10.0.0.2, node: n2, labels: { app: api } }
  - { name: c, namespace: x, serviceAccount: c, ip: 10.0.0.3, node: n1, captured: false, labels: { app: api } }
  - { name: d, namespace: x, serviceAccount: d, ip: 10.0.0.4, node: n2, captured: false, labels: { app: legacy } }
services:
  - { name: api, namespace: x, clusterIP: 10.96.0.1, ports: [{ port: 80, targetPort: 8080 }], selector: { app: api } }
  - { name: legacy, namespace: x, clusterIP: 10.96.0.2, ports: [{ port: 80, targetPort: 8080 }], selector: { app: legacy } }
  - { name: outside, namespace: x, clusterIP: 10.96.0.3, ports: [{ port: 80, targetPort: 8080 }], endpoints: [192.0.2.7] }
`;
    const r = new WorkloadRegistry('n1');
    r.replace(parseWorkloadsFile(doc));
    // Pods outside the mesh (c, d), and Services with no endpoint in it, are never redirected: their
    // connections leave from the pod's own address, as without meshlet.
    assert.deepEqual([...r.destinations].sort(), ['10.0.0.1', '10.0.0.2', '10.96.0.1']);
    // A node agent resolves a Service to its endpoints in the mesh only: it never dials outside it.
    assert.deepEqual(r.findService('10.96.0.1', 80)?.service.endpoints.map((e) => e.ip).sort(), ['10.0.0.1', '10.0.0.2']);
    assert.equal(r.findService('10.96.0.2', 80), undefined);
    assert.equal(r.findService('10.96.0.3', 80), undefined);

    // A sidecar dials from inside its own pod: it balances over every endpoint, as before.
    const sidecar = new WorkloadRegistry('n1', { namespace: 'x', name: 'a' });
    sidecar.replace(parseWorkloadsFile(doc));
    assert.deepEqual(sidecar.findService('10.96.0.1', 80)?.service.endpoints.map((e) => e.ip).sort(), ['10.0.0.1', '10.0.0.2', '10.0.0.3']);
    assert.deepEqual(sidecar.findService('10.96.0.3', 80)?.service.endpoints.map((e) => e.ip), ['192.0.2.7']);
  });

  it('remembers a pod released from the mesh for a moment, and not a deleted one or an address taken over', () => {
    let now = 1_000;
    const r = new WorkloadRegistry('n1', undefined, () => now);
    const doc = (b: string, c = '  - { name: c, namespace: x, serviceAccount: c, ip: 10.0.0.3, node: n2 }') => parseWorkloadsFile(`trustDomain: td
nodes: [{ name: n1, ip: 10.1.0.1 }, { name: n2, ip: 10.1.0.2 }]
workloads:
${b}
${c}
`);
    r.replace(doc('  - { name: b, namespace: x, serviceAccount: b, ip: 10.0.0.2, node: n2 }'));
    r.replace(doc('  - { name: b, namespace: x, serviceAccount: b, ip: 10.0.0.2, node: n2, captured: false }', ''));
    assert.equal(r.departed('10.0.0.2')?.spiffeId, 'spiffe://td/ns/x/sa/b', 'released: remembered as it was');
    assert.equal(r.departed('10.0.0.2')?.captured, true);
    assert.equal(r.departed('10.0.0.3'), undefined, 'deleted: nothing left to reach');
    now += DEPARTED_MS;
    assert.equal(r.departed('10.0.0.2'), undefined, 'forgotten after DEPARTED_MS');

    r.replace(doc('  - { name: b, namespace: x, serviceAccount: b, ip: 10.0.0.2, node: n2 }'));
    r.replace(doc('  - { name: other, namespace: x, serviceAccount: o, ip: 10.0.0.2, node: n2, captured: false }'));
    assert.equal(r.departed('10.0.0.2'), undefined, 'another pod holds the address now');
    r.replace(doc('  - { name: b, namespace: x, serviceAccount: b, ip: 10.0.0.2, node: n2 }'));
    r.replace(doc('  - { name: b, namespace: x, serviceAccount: b, ip: 10.0.0.2, node: n2, captured: false }'));
    r.replace(doc('  - { name: b, namespace: x, serviceAccount: b, ip: 10.0.0.2, node: n2 }'));
    assert.equal(r.departed('10.0.0.2'), undefined, 'back in the mesh');
  });
});
