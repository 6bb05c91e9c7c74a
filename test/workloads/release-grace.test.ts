// A released pod's own agent lets go last (src/workloads/release-grace.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { MeshSnapshot, Workload } from '../../src/workloads/model.ts';
import { ReleaseGrace } from '../../src/workloads/release-grace.ts';

const pod = (name: string, ip: string, node: string, captured = true): Workload => ({
  name, namespace: 'shop', serviceAccount: name, ip, node, captured, spiffeId: `spiffe://td/ns/shop/sa/${name}`, labels: {}, workload: name,
});
const mesh = (...workloads: Workload[]): MeshSnapshot => ({ trustDomain: 'td', nodes: [], workloads, services: [], policies: [], mtls: {}, refused: [] } as unknown as MeshSnapshot);

describe('release grace', () => {
  it('keeps its own node\'s released pod captured and leaving for the grace, then lets go', () => {
    let now = 0;
    const g = new ReleaseGrace({ node: 'node-b', graceMs: 1_000, now: () => now });
    g.apply(mesh(pod('db', '10.0.0.2', 'node-b'), pod('web', '10.0.0.1', 'node-a')));
    const released = g.apply(mesh(pod('db', '10.0.0.2', 'node-b', false), pod('web', '10.0.0.1', 'node-a', false)));
    const db = released.workloads.find((w) => w.name === 'db')!;
    assert.deepEqual([db.captured, db.leaving], [true, true], 'this node\'s pod: still served, leaving');
    assert.equal(released.workloads.find((w) => w.name === 'web')!.captured, false, 'another node\'s pod is released at once');
    assert.equal(released.workloads.length, 2);
    assert.equal(g.nextEnd, 1_000);
    now = 1_000;
    const after = g.apply(mesh(pod('db', '10.0.0.2', 'node-b', false), pod('web', '10.0.0.1', 'node-a', false)));
    assert.deepEqual(after.workloads.map((w) => [w.name, w.captured, w.leaving]), [['db', false, undefined], ['web', false, undefined]]);
    assert.equal(g.nextEnd, undefined);
  });

  it('ends the grace when the pod is captured again, deleted, or its address goes to another pod', () => {
    let now = 0;
    const g = new ReleaseGrace({ node: 'node-b', graceMs: 1_000, now: () => now });
    g.apply(mesh(pod('a', '10.0.0.2', 'node-b'), pod('b', '10.0.0.3', 'node-b'), pod('c', '10.0.0.4', 'node-b')));
    const released = g.apply(mesh(pod('a', '10.0.0.2', 'node-b', false), pod('b', '10.0.0.3', 'node-b', false), pod('c', '10.0.0.4', 'node-b', false)));
    assert.equal(released.workloads.filter((w) => w.leaving).length, 3);
    now = 10;
    const next = g.apply(mesh(pod('a', '10.0.0.2', 'node-b'), pod('other', '10.0.0.3', 'node-b', false)));
    assert.deepEqual(next.workloads.map((w) => [w.name, w.captured, w.leaving]), [['a', true, undefined], ['other', false, undefined]]);
    assert.equal(g.nextEnd, undefined);
  });

  it('gives a pod that was deleted, not released, no grace', () => {
    const g = new ReleaseGrace({ node: 'node-b', graceMs: 1_000, now: () => 0 });
    g.apply(mesh(pod('db', '10.0.0.2', 'node-b')));
    assert.deepEqual(g.apply(mesh()).workloads, []);
  });
});
