// The address controller against the API stand-in: its slices follow the mesh's pods (the same
// membership and address checks the agents apply), a slice someone else wrote wrong is put right,
// and with two replicas only the leader writes; killing it hands over within 15 s without
// rewriting a slice, and the slices follow pods again.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, it } from 'node:test';
import pino from 'pino';
import { AddressController } from '../../src/addresses/controller.ts';
import { type AddressEntry, readSlice } from '../../src/addresses/slices.ts';
import { ApiStandIn, namespaceObject, nodeObject, podObject } from '../support/apiserver.ts';
import { eventually } from '../support/wait.ts';

const NS = 'meshlet-system';
const MAIN = join(import.meta.dirname, '..', 'support', 'address-controller-main.ts');

async function cluster(pods: number): Promise<ApiStandIn> {
  const api = await ApiStandIn.start();
  api.put('namespaces', namespaceObject('shop', 'enabled'));
  api.put('namespaces', namespaceObject('blog'));
  api.put('nodes', nodeObject('n1', ['10.1.1.0/24']));
  api.put('nodes', nodeObject('n2', ['10.1.2.0/24']));
  for (let i = 0; i < pods; i++) {
    const node = i % 2 === 0 ? 'n1' : 'n2';
    api.put('pods', podObject({ name: `web-${i}`, namespace: 'shop', node, serviceAccount: 'web', ip: `10.1.${node === 'n1' ? 1 : 2}.${10 + Math.floor(i / 2)}` }));
  }
  api.put('pods', podObject({ name: 'post-1', namespace: 'blog', node: 'n1', serviceAccount: 'post', ip: '10.1.1.200' }));
  return api;
}

/** What the stand-in's slices hold, by IP (and whether an IP is in two slices). */
function published(api: ApiStandIn): Map<string, AddressEntry> {
  const out = new Map<string, AddressEntry>();
  for (const o of api.all('meshaddressslices')) {
    for (const e of readSlice(o).slice.entries) {
      assert.ok(!out.has(e.ip), `${e.ip} is in two slices`);
      out.set(e.ip, e);
    }
  }
  return out;
}
const versions = (api: ApiStandIn) => Object.fromEntries(api.all('meshaddressslices').map((o) => [o.metadata.name, o.metadata.resourceVersion]));

describe('address controller', () => {
  const cleanups: Array<() => unknown> = [];
  after(async () => { for (const c of cleanups.reverse()) await c(); });

  it('publishes the mesh\'s pods in slices and follows them', async () => {
    const api = await cluster(150);
    cleanups.push(() => api.close());
    const controller = new AddressController({ kubeConfig: api.kubeConfig(), namespace: NS, identity: 'a', trustDomain: 'cluster.local', log: pino({ level: 'silent' }), batchMs: 20 });
    cleanups.push(() => controller.close());
    await controller.start();
    // The stand-in holds a slice before the controller has its answer: wait for both creates counted.
    await eventually('150 entries, both creates answered', () => published(api).size === 150 && controller.status().writes.create === 2);
    assert.equal(api.all('meshaddressslices').length, 2);
    assert.deepEqual(published(api).get('10.1.1.10'), { ip: '10.1.1.10', namespace: 'shop', serviceAccount: 'web', node: 'n1', captured: true, workload: 'web-0' });
    assert.equal(published(api).has('10.1.1.200'), false, 'a pod of a namespace not in the mesh was published');
    const settled = versions(api);
    const writes = controller.status().writes;

    api.put('pods', podObject({ name: 'db-1', namespace: 'shop', node: 'n2', serviceAccount: 'db', ip: '10.1.2.250' }));
    await eventually('the new pod', () => published(api).get('10.1.2.250')?.serviceAccount === 'db');
    api.put('pods', podObject({ name: 'web-3', namespace: 'shop', node: 'n2', serviceAccount: 'web', ip: '10.1.2.11', annotations: { 'meshlet.dev/capture': 'disabled' } }));
    await eventually('the opted-out pod gone', () => !published(api).has('10.1.2.11'));
    api.remove('pods', 'shop', 'web-4');
    await eventually('the deleted pod gone', () => !published(api).has('10.1.1.12'));
    // An address outside its node's podCIDRs is refused, as the agents refuse it.
    api.put('pods', podObject({ name: 'liar', namespace: 'shop', node: 'n1', serviceAccount: 'web', ip: '10.1.2.240' }));
    // Three changes, one slice each at most, and no new slice: the new pod filled a slice with room.
    await eventually('the liar refused', () => controller.status().entries === 149 && published(api).size === 149);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(published(api).has('10.1.2.240'), false);
    const now = controller.status().writes;
    assert.equal(now.create, writes.create);
    assert.ok(now.update - writes.update <= 3, `${now.update - writes.update} updates for three changes`);
    assert.equal(Object.keys(versions(api)).length, Object.keys(settled).length);

    // A slice written by someone else, with an impostor entry and a malformed one: put right.
    const [first] = api.all('meshaddressslices');
    api.put('meshaddressslices', { ...first!, entries: [...(first!.entries as object[]), { ip: '10.1.1.199', namespace: 'kube-system', serviceAccount: 'admin', node: 'n1', captured: false, workload: 'x' }, { ip: 'bad' }] });
    await eventually('the impostor entry gone', () => !published(api).has('10.1.1.199') && published(api).size === 149);
  });

  it('with two replicas, only the leader writes; killed, the other takes over within 15 s without rewriting a slice', { timeout: 60_000 }, async () => {
    const api = await cluster(250);
    cleanups.push(() => api.close());
    const dir = mkdtempSync(join(tmpdir(), 'meshlet-addresses-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    writeFileSync(join(dir, 'kubeconfig'), api.kubeConfigYaml());
    const replicas = new Map<string, { child: ChildProcess; leading: boolean }>();
    for (const id of ['a', 'b']) {
      const child = spawn(process.execPath, [MAIN, '--kubeconfig', join(dir, 'kubeconfig'), '--identity', id], { stdio: ['ignore', 'pipe', 'inherit'] });
      cleanups.push(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
      const r = { child, leading: false };
      createInterface({ input: child.stdout! }).on('line', (l) => { const m = JSON.parse(l) as { leading?: boolean }; if (m.leading !== undefined) r.leading = m.leading; });
      replicas.set(id, r);
    }
    await eventually('a leader', () => [...replicas.values()].some((r) => r.leading), 15_000);
    await eventually('250 entries', () => published(api).size === 250);
    const [leaderId, leader] = [...replicas.entries()].find(([, r]) => r.leading)!;
    const [, other] = [...replicas.entries()].find(([id]) => id !== leaderId)!;
    assert.equal(other.leading, false);
    const before = versions(api);

    leader.child.kill('SIGKILL'); // no lease released: the other waits it out
    const killedAt = Date.now();
    await eventually('the other replica leading', () => other.leading, 15_000);
    // The handover itself wrote nothing: every slice as it was.
    await new Promise((r) => setTimeout(r, 500));
    assert.deepEqual(versions(api), before, 'slices were rewritten during the handover');
    api.put('pods', podObject({ name: 'late', namespace: 'shop', node: 'n2', serviceAccount: 'late', ip: '10.1.2.251' }));
    await eventually('the late pod', () => published(api).has('10.1.2.251'), 15_000);
    const tookMs = Date.now() - killedAt;
    assert.ok(tookMs < 15_000, `slices followed pods again ${tookMs} ms after the leader died`);
    const lease = api.get('leases', NS, 'meshlet-address-controller')!.spec as { holderIdentity: string; leaseTransitions: number };
    assert.notEqual(lease.holderIdentity, leaderId);
    assert.equal(lease.leaseTransitions, 1);
    other.child.kill('SIGTERM');
    await new Promise((r) => other.child.once('exit', r));
  });
});
