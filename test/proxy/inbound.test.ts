import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { claimedSource } from '../../src/proxy/inbound.ts';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import { WorkloadRegistry } from '../../src/workloads/registry.ts';

describe('source claimed by a tunnel peer', () => {
  const registry = new WorkloadRegistry('node-b');
  registry.replace(parseWorkloadsFile(`trustDomain: td
nodes: [{ name: node-a, ip: 10.240.0.11 }, { name: node-b, ip: 10.240.0.12 }]
workloads:
  - { name: web, namespace: shop, serviceAccount: web, ip: 10.241.1.11, node: node-a }
  - { name: admin, namespace: ops, serviceAccount: admin, ip: 10.241.1.12, node: node-a }
`));
  const web = 'spiffe://td/ns/shop/sa/web';

  it('is believed when the registry puts that IP on the identity the peer proved', () => {
    assert.equal(claimedSource('for=10.241.1.11', web, registry)?.name, 'web');
  });

  it('is not believed for another workload\'s address, an unknown address, or no header', () => {
    assert.equal(claimedSource('for=10.241.1.12', web, registry), undefined, 'web may not borrow admin\'s address');
    assert.equal(claimedSource('for=10.9.9.9', web, registry), undefined);
    assert.equal(claimedSource(undefined, web, registry), undefined);
    assert.equal(claimedSource('garbage', web, registry), undefined);
  });
});
