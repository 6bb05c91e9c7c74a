// Leader election on a Lease in the API stand-in: one leader among candidates that start together,
// a released lease taken at the next try, a silent leader replaced only after its lease ran out and
// after it stopped leading itself (never two leaders at once).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { LeaderElection, LeaseObserver } from '../../src/addresses/lease.ts';
import { type KubeApi, kubeApi } from '../../src/kube/api.ts';
import { ApiStandIn } from '../support/apiserver.ts';
import { eventually } from '../support/wait.ts';

const TIMING = { durationMs: 600, renewDeadlineMs: 400, retryMs: 100 };

describe('leader election on a Lease', () => {
  let api: ApiStandIn;
  const elections: LeaderElection[] = [];
  before(async () => { api = await ApiStandIn.start(); });
  after(async () => {
    for (const e of elections) await e.stop();
    await api?.close();
  });

  /** A candidate, its leading spans recorded as [start, stop] times; `client` can be cut off. */
  function candidate(identity: string, name: string, client: KubeApi = kubeApi(api.kubeConfig())) {
    const spans: Array<[number, number?]> = [];
    const e = new LeaderElection({
      api: client, namespace: 'meshlet-system', name, identity, log: pino({ level: 'silent' }), ...TIMING,
      onStartedLeading: () => spans.push([Date.now()]),
      onStoppedLeading: () => { spans.at(-1)![1] = Date.now(); },
    });
    elections.push(e);
    return { e, spans };
  }
  const holder = (name: string) => (api.get('leases', 'meshlet-system', name)?.spec as { holderIdentity?: string; leaseTransitions?: number } | undefined);

  it('makes one leader of candidates that start together, and keeps it while it renews', async () => {
    const cs = ['a', 'b', 'c'].map((id) => candidate(id, 'together'));
    for (const c of cs) c.e.start();
    await eventually('a leader', () => cs.some((c) => c.e.leading));
    // Three lease durations later: still exactly that one.
    const first = cs.find((c) => c.e.leading)!;
    await new Promise((r) => setTimeout(r, 3 * TIMING.durationMs));
    assert.deepEqual(cs.map((c) => c.e.leading), cs.map((c) => c === first));
    assert.equal(holder('together')?.holderIdentity, ['a', 'b', 'c'][cs.indexOf(first)]);
    for (const c of cs) assert.equal(c.spans.length, c === first ? 1 : 0);
    for (const c of cs) await c.e.stop();
  });

  it('hands a released lease to the next candidate at its next try', async () => {
    const a = candidate('a', 'released');
    a.e.start();
    await eventually('a leading', () => a.e.leading);
    const b = candidate('b', 'released');
    b.e.start();
    await eventually('b following a', () => b.e.state.phase === 'following' && (b.e.state as { holder?: string }).holder === 'a');
    const stoppedAt = Date.now();
    await a.e.stop();
    await eventually('b leading', () => b.e.leading);
    // Released, not expired: well within the lease's duration.
    assert.ok(b.spans[0]![0] - stoppedAt < TIMING.durationMs, `b took ${b.spans[0]![0] - stoppedAt} ms`);
    assert.deepEqual(holder('released'), { ...holder('released'), holderIdentity: 'b', leaseTransitions: 1 });
    await b.e.stop();
  });

  it('lets an agent tell whether the lease is kept: stale with no holder, a released lease or no renewal', async () => {
    const observer = new LeaseObserver({ api: kubeApi(api.kubeConfig()), namespace: 'meshlet-system', name: 'observed', everyMs: 50, staleMs: 400 });
    observer.start();
    try {
      await eventually('a first read', () => observer.sighting().unseenMs !== undefined);
      assert.equal(observer.sighting().stale, true, 'no lease at all counts as not kept');
      const a = candidate('a', 'observed');
      a.e.start();
      await eventually('kept', () => !observer.sighting().stale && observer.sighting().holder === 'a');
      // Kept for longer than staleMs while a renews.
      await new Promise((r) => setTimeout(r, 3 * 400));
      assert.equal(observer.sighting().stale, false);
      await a.e.stop(); // released: nobody keeps the table
      await eventually('stale once released', () => observer.sighting().stale && observer.sighting().holder === '');
    } finally {
      observer.stop();
    }
  });

  it('replaces a leader that went silent only after it stopped leading itself', async () => {
    let cut = false;
    const real = kubeApi(api.kubeConfig());
    const unreachable = () => Promise.reject(new Error('connection refused'));
    const flaky: KubeApi = {
      get: (p, q) => (cut ? unreachable() : real.get(p, q)),
      send: (m, p, b, t) => (cut ? unreachable() : real.send(m, p, b, t)),
      remove: (p, rv) => (cut ? unreachable() : real.remove(p, rv)),
    };
    const a = candidate('a', 'silent', flaky);
    a.e.start();
    await eventually('a leading', () => a.e.leading);
    const b = candidate('b', 'silent');
    b.e.start();
    await eventually('b following', () => b.e.state.phase === 'following' && (b.e.state as { holder?: string }).holder === 'a');
    cut = true; // a's node loses the apiserver: it cannot renew, and nobody can tell it
    await eventually('b leading', () => b.e.leading, 5_000);
    assert.equal(a.e.leading, false);
    const [aStart, aStop] = a.spans[0]!;
    assert.ok(aStop !== undefined && aStart < aStop, 'a never stopped leading');
    assert.ok(aStop <= b.spans[0]![0], `a led until ${aStop}, b from ${b.spans[0]![0]}: two leaders`);
    assert.equal(holder('silent')?.holderIdentity, 'b');
    await b.e.stop();
  });
});
