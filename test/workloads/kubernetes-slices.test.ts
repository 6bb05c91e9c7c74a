// The Kubernetes source with other nodes' pods from the address slices (--remote-workloads slices):
// its own node's Pods watched in full, everyone else's from the slices the address controller
// writes, and nothing in a slice can speak for this node's pods.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { AddressController } from '../../src/addresses/controller.ts';
import { sliceObject } from '../../src/addresses/slices.ts';
import { createKubernetesSource, type KubernetesSource } from '../../src/workloads/kubernetes.ts';
import type { MeshSnapshot, Workload } from '../../src/workloads/model.ts';
import { ApiStandIn, namespaceObject, nodeObject, podObject } from '../support/apiserver.ts';
import { eventually } from '../support/wait.ts';

const NS = 'meshlet-system';
const log = pino({ level: 'silent' });

describe('Kubernetes source with remote pods from address slices', () => {
  let api: ApiStandIn;
  let controller: AddressController;
  let source: KubernetesSource;
  let last: MeshSnapshot | undefined;
  const byIp = (ip: string): Workload | undefined => last?.workloads.find((w) => w.ip === ip);

  before(async () => {
    api = await ApiStandIn.start();
    api.put('namespaces', namespaceObject('shop', 'enabled'));
    api.put('nodes', nodeObject('n1', ['10.1.1.0/24']));
    api.put('nodes', nodeObject('n2', ['10.1.2.0/24']));
    for (let i = 0; i < 20; i++) {
      const node = i % 2 === 0 ? 'n1' : 'n2';
      api.put('pods', podObject({ name: `web-${i}`, namespace: 'shop', node, serviceAccount: 'web', ip: `10.1.${node.slice(1)}.${10 + i}`, labels: { app: 'web', i: String(i) } }));
    }
    controller = new AddressController({ kubeConfig: api.kubeConfig(), namespace: NS, identity: 'ca-0', trustDomain: 'cluster.local', log, batchMs: 10 });
    await controller.start();
    source = createKubernetesSource({ kubeConfig: api.kubeConfig(), trustDomain: 'cluster.local', log, debounceMs: 5,
      remoteFromSlices: { node: 'n1', namespace: NS, lease: { everyMs: 50, staleMs: 3_000 } } });
    await source.start({ onSnapshot: (s) => { last = s; }, onError: (e) => { throw e; } });
  });
  after(async () => {
    await source?.close();
    await controller?.close();
    await api?.close();
  });

  it('watches only its own node\'s Pods, and knows every other pod from the slices', async () => {
    await eventually('20 workloads', () => last?.workloads.length === 20);
    assert.equal(source.status().pods, 10, 'the agent cached other nodes\' Pods');
    // The table may be behind its writer: the cluster's pod ranges come with it (the controller-away rule).
    assert.deepEqual(last?.podRanges, ['10.1.1.0/24', '10.1.2.0/24']);
    assert.ok(api.requests.some((r) => r.path.startsWith('/api/v1/pods') && decodeURIComponent(r.path).includes('spec.nodeName=n1')));
    // Its own pods in full (labels: policy selects them), the others as the slices carry them.
    assert.deepEqual(byIp('10.1.1.10')?.labels, { app: 'web', i: '0' });
    assert.deepEqual(byIp('10.1.2.11'), {
      name: 'web-1', namespace: 'shop', serviceAccount: 'web', ip: '10.1.2.11', node: 'n2', captured: true,
      spiffeId: 'spiffe://cluster.local/ns/shop/sa/web', labels: {}, workload: 'web-1',
    });
  });

  it('takes the pod ranges the operator gives over the Nodes\' (a CNI with its own IPAM)', async () => {
    let got: MeshSnapshot | undefined;
    const given = createKubernetesSource({ kubeConfig: api.kubeConfig(), trustDomain: 'cluster.local', log, debounceMs: 5,
      remoteFromSlices: { node: 'n1', namespace: NS, podRanges: ['10.9.3.7/16', 'bad'] } });
    try {
      await given.start({ onSnapshot: (snap) => { got = snap; }, onError: (e) => { throw e; } });
      await eventually('a snapshot', () => got !== undefined);
      assert.deepEqual(got?.podRanges, ['10.9.0.0/16']);
    } finally {
      await given.close();
    }
  });

  it('follows pods created and deleted on other nodes through the slices', async () => {
    api.put('pods', podObject({ name: 'db-0', namespace: 'shop', node: 'n2', serviceAccount: 'db', ip: '10.1.2.99' }));
    await eventually('db-0', () => byIp('10.1.2.99')?.serviceAccount === 'db');
    api.remove('pods', 'shop', 'web-3');
    await eventually('web-3 gone', () => !byIp('10.1.2.13'));
  });

  it('says when nobody keeps the slices, keeps the last table, and takes nothing from a slice about its own node', async () => {
    // A slice the controller did not write (stopped, so that it does not put it right at once): it
    // claims an address on n1 that no pod of n1 has, and gives an address of one of n1's pods to
    // another identity.
    await eventually('the controller seen keeping the slices', () => source.addressController?.()?.stale === false);
    await controller.close();
    // Released: the agent says so, and keeps every remote pod it knew.
    await eventually('the table reported stale', () => source.status().addressController?.stale === true);
    assert.equal(byIp('10.1.2.11')?.serviceAccount, 'web');
    api.put('meshaddressslices', sliceObject(NS, 'forged-n1', 'n1', [
      { ip: '10.1.1.77', namespace: 'kube-system', serviceAccount: 'admin', node: 'n1', captured: true, workload: 'x' },
    ]) as never);
    api.put('meshaddressslices', sliceObject(NS, 'forged-n2', 'n2', [
      { ip: '10.1.1.12', namespace: 'kube-system', serviceAccount: 'admin', node: 'n2', captured: true, workload: 'x' },
      { ip: '10.1.2.200', namespace: 'shop', serviceAccount: 'other', node: 'n2', captured: true, workload: 'other' },
    ]) as never);
    await eventually('the forged slice read', () => byIp('10.1.2.200')?.serviceAccount === 'other');
    assert.equal(byIp('10.1.1.77'), undefined);
    assert.deepEqual(last!.workloads.filter((w) => w.ip === '10.1.1.12').map((w) => w.serviceAccount), ['web']);
  });
});
