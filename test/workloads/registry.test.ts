import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import { WorkloadRegistry } from '../../src/workloads/registry.ts';

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
});
