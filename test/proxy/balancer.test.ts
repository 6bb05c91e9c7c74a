import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EndpointBalancer } from '../../src/proxy/balancer.ts';
import type { MeshService, ServiceEndpoint } from '../../src/workloads/model.ts';

const ep = (ip: string, node = 'node-a', ready = true, port = 8080): ServiceEndpoint => ({ ip, node, ready, ports: { http: port } });

function service(endpoints: ServiceEndpoint[], preferClose = false): MeshService {
  return { name: 'api', namespace: 'shop', clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80 }], endpoints, preferClose };
}

/** A seeded generator, so the spread checks are repeatable. */
function seeded(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

describe('endpoint balancer', () => {
  it('picks only ready endpoints that serve the port, and none when there are none', () => {
    const svc = service([ep('10.0.0.1', 'a', false), { ip: '10.0.0.2', node: 'a', ready: true, ports: { metrics: 9090 } }, ep('10.0.0.3')]);
    const b = new EndpointBalancer({ random: seeded(1) });
    for (let i = 0; i < 20; i++) assert.equal(b.pick(svc, 'http', 'a')?.ip, '10.0.0.3');
    assert.equal(b.pick(svc, 'grpc', 'a'), undefined);
    assert.equal(b.pick(svc, 'http', 'a', new Set(['10.0.0.3'])), undefined, 'an excluded endpoint is not picked again');
  });

  it('spreads held connections evenly (power of two choices on open connections)', () => {
    const svc = service([ep('10.0.0.1'), ep('10.0.0.2'), ep('10.0.0.3')]);
    const b = new EndpointBalancer({ random: seeded(7) });
    const count = new Map<string, number>();
    for (let i = 0; i < 3000; i++) {
      const e = b.pick(svc, 'http', 'node-a')!;
      b.lease(svc, e); // held open: the counts steer the next picks
      count.set(e.ip, (count.get(e.ip) ?? 0) + 1);
    }
    const n = [...count.values()];
    assert.equal(n.length, 3);
    assert.ok(Math.max(...n) - Math.min(...n) <= 2, `spread ${n.join(', ')}`);
  });

  it('prefers this node\'s endpoints when the Service asks for close ones, and others when it has none', () => {
    const svc = service([ep('10.0.0.1', 'node-a'), ep('10.0.0.2', 'node-b'), ep('10.0.0.3', 'node-b')], true);
    const b = new EndpointBalancer({ random: seeded(3) });
    for (let i = 0; i < 20; i++) assert.equal(b.pick(svc, 'http', 'node-a')?.ip, '10.0.0.1');
    const seen = new Set<string>();
    for (let i = 0; i < 50; i++) seen.add(b.pick(svc, 'http', 'node-c')!.ip);
    assert.equal(seen.size, 3);
    const closeDown = service([{ ...ep('10.0.0.1', 'node-a'), ready: false }, ep('10.0.0.2', 'node-b')], true);
    assert.equal(b.pick(closeDown, 'http', 'node-a')?.ip, '10.0.0.2', 'no ready close endpoint: a far one');
  });

  it('ejects an endpoint after consecutive failures, for longer each time, and takes it back after', () => {
    let now = 1_000_000;
    const ejected: Array<[string, number]> = [];
    const svc = service([ep('10.0.0.1'), ep('10.0.0.2')]);
    const b = new EndpointBalancer({ now: () => now, random: seeded(5), consecutiveFailures: 3, baseEjectionMs: 10_000, onEject: (_s, e, ms) => ejected.push([e.ip, ms]) });
    const fail = () => { const l = b.lease(svc, svc.endpoints[0]!); l.failure(new Error('ECONNREFUSED')); l.release(); };
    fail();
    fail();
    assert.equal(ejected.length, 0, 'two failures are not enough');
    const ok = b.lease(svc, svc.endpoints[0]!);
    ok.success();
    ok.release();
    fail();
    fail();
    assert.equal(ejected.length, 0, 'a success resets the count');
    fail();
    assert.deepEqual(ejected, [['10.0.0.1', 10_000]]);
    for (let i = 0; i < 20; i++) assert.equal(b.pick(svc, 'http', 'node-a')?.ip, '10.0.0.2');
    assert.ok(b.view(svc)[0]!.ejectedUntil);
    now += 10_001;
    const back = new Set<string>();
    for (let i = 0; i < 30; i++) back.add(b.pick(svc, 'http', 'node-a')!.ip);
    assert.ok(back.has('10.0.0.1'), 'back after its ejection time');
    fail(); fail(); fail();
    assert.deepEqual(ejected.at(-1), ['10.0.0.1', 20_000], 'the second ejection lasts twice as long');
  });

  it('never ejects the last healthy endpoint, and tries ejected ones when nothing else is left', () => {
    let now = 0;
    const svc = service([ep('10.0.0.1'), ep('10.0.0.2')]);
    const b = new EndpointBalancer({ now: () => now, random: seeded(9) });
    const failN = (i: number, n: number) => { for (let k = 0; k < n; k++) { const l = b.lease(svc, svc.endpoints[i]!); l.failure(new Error('x')); l.release(); } };
    failN(0, 3);
    failN(1, 3);
    const views = b.view(svc);
    assert.equal(views.filter((v) => v.ejectedUntil).length, 1, 'only one of the two is out');
    assert.equal(b.pick(svc, 'http', 'node-a')?.ip, '10.0.0.2');
    assert.equal(b.pick(svc, 'http', 'node-a', new Set(['10.0.0.2']))?.ip, '10.0.0.1', 'panic: an ejected endpoint beats none');
    now += 1;
  });

  it('releases once per lease, and forgets endpoints that are gone', () => {
    const svc = service([ep('10.0.0.1'), ep('10.0.0.2')]);
    const b = new EndpointBalancer();
    const l = b.lease(svc, svc.endpoints[0]!);
    l.release();
    l.release();
    assert.equal(b.view(svc)[0]!.open, 0);
    const held = b.lease(svc, svc.endpoints[1]!);
    b.prune([service([ep('10.0.0.3')])]);
    assert.equal(b.ejected().length, 1);
    b.prune([]);
    assert.deepEqual(b.ejected(), []);
    held.release();
  });
});
