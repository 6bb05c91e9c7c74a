// N data planes in worker threads sharing the data ports (src/proxy/workers.ts), on loopback
// without root: node-b's data plane is two workers, node-a's an in-process one whose tunnels reach
// them. The kernel spreads connections over the workers; the control plane sees one data plane.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import type { CertificateManager } from '../../src/identity/certs.ts';
import { DataPlane } from '../../src/proxy/data-plane.ts';
import { sharedCounters, workerSettings, workerShares } from '../../src/proxy/host.ts';
import type { DataPlaneSnapshot } from '../../src/proxy/snapshot.ts';
import { WorkerVouching } from '../../src/proxy/worker.ts';
import { DataPlaneWorkers } from '../../src/proxy/workers.ts';
import type { DataPlaneGauges } from '../../src/proxy/view.ts';
import { MeshMetrics } from '../../src/telemetry/metrics.ts';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import { parseMetrics, sum } from '../support/prometheus.ts';
import { issuedIdentities, testSettings } from '../support/proxy-context.ts';
import { eventually } from '../support/wait.ts';

const TD = 'workers.test';
const IP = { web: '127.0.7.11', db: '127.0.7.21', outside: '127.0.7.99' };
const YAML = `trustDomain: ${TD}
nodes: [{ name: node-a, ip: 127.0.7.1 }, { name: node-b, ip: 127.0.7.2 }]
workloads:
  - { name: web, namespace: shop, serviceAccount: web, ip: ${IP.web}, node: node-a, labels: { app: web } }
  - { name: db, namespace: shop, serviceAccount: db, ip: ${IP.db}, node: node-b, labels: { app: db } }
`;
const silent = pino({ level: 'silent' });

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '0.0.0.0', resolve));
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/** A connection that echoes: resolves once `text` came back, with the socket still open. */
async function echoed(connect: () => net.Socket, text: string): Promise<net.Socket> {
  const s = connect();
  s.on('error', () => undefined);
  let got = '';
  await new Promise<void>((resolve, reject) => {
    s.on('data', (d: Buffer) => { got += d.toString(); if (got === text) resolve(); });
    s.once('close', () => reject(new Error(`closed after ${JSON.stringify(got)}`)));
    s.write(text);
  });
  return s;
}

/** Sends `text` on an open echo connection; resolves with what came back once that much did. */
function again(s: net.Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (d: Buffer) => { got += d.toString(); if (got.length >= text.length) { s.off('data', onData); resolve(got); } };
    s.on('data', onData);
    s.once('close', () => reject(new Error(`closed after ${JSON.stringify(got)}`)));
    s.write(text);
  });
}

describe('data planes in worker threads', () => {
  const ports = { outbound: 0, inboundPlaintext: 0, tunnel: 0 };
  let app: net.Server;
  let certsA: CertificateManager;
  let certsB: CertificateManager;
  let a: DataPlane;
  let aOutbound: net.Server;
  let b: DataPlaneWorkers;
  const metrics = new MeshMetrics();
  let gauges: DataPlaneGauges | undefined;
  const vouchedFor: string[] = [];
  let generation = 0;
  const snapshot = (certs: CertificateManager): DataPlaneSnapshot => ({ generation: ++generation, meshGeneration: 1, mesh: parseWorkloadsFile(YAML), identities: certs.materials() });
  const plaintext = () => net.connect({ host: IP.db, port: ports.inboundPlaintext, localAddress: IP.outside });
  const viaTunnel = () => net.connect({ host: '127.0.0.1', port: (aOutbound.address() as net.AddressInfo).port, localAddress: IP.web });

  before(async () => {
    [certsA, certsB] = await issuedIdentities(TD, [`spiffe://${TD}/ns/shop/sa/web`], [`spiffe://${TD}/ns/shop/sa/db`]) as [CertificateManager, CertificateManager];
    app = net.createServer((s) => { s.on('error', () => undefined); s.pipe(s); });
    const appPort = await new Promise<number>((resolve) => app.listen(0, IP.db, () => resolve((app.address() as net.AddressInfo).port)));
    process.env.MESHLET_TEST_APP_PORT = String(appPort);
    for (const k of Object.keys(ports) as Array<keyof typeof ports>) ports[k] = await freePort();
    b = new DataPlaneWorkers({
      workers: 2, log: silent, logBase: { node: 'node-b' },
      settings: testSettings('node-b', ports.tunnel, { ports, agentPorts: Object.values(ports), accessLog: false }),
      absorb: (batch) => metrics.absorb(batch),
      vouch: { ensure: (ip) => { vouchedFor.push(ip); return undefined; }, freshMs: 60_000 },
      entry: new URL('../support/workers-entry.ts', import.meta.url),
    });
    metrics.readFrom({ refresh: async () => { gauges = await b.gauges(); }, openConnections: () => gauges?.openConnections ?? {} });
    b.apply(snapshot(certsB));
    await b.listen();
    // node-a: in this thread; its tunnels dial node-b's pods at the workers' shared port.
    a = new DataPlane(testSettings('node-a', ports.tunnel, { accessLog: false }), {
      log: silent,
      originalDestination: (s) => (s.localPort === (aOutbound.address() as net.AddressInfo).port ? { ip: IP.db, port: appPort, family: 4 } : { ip: s.localAddress ?? '', port: s.localPort ?? 0, family: 4 }),
      stallProbe: { probe: () => undefined, reset: (s) => s.destroy() },
    });
    a.apply(snapshot(certsA));
    aOutbound = a.listeners.outbound;
    await new Promise<void>((resolve) => aOutbound.listen(0, '127.0.0.1', resolve));
  });

  after(async () => {
    await b?.close(() => 0);
    await a?.close(() => 0);
    aOutbound?.close();
    app?.close();
    certsA?.close();
    certsB?.close();
  });

  it('shares the slot counts between the workers and splits what is each one\'s own', () => {
    const limits = { maxConnections: 16384, maxPerSource: 1024, maxPendingHandshakes: 1, maxPendingPerSource: 3, handshakeRate: 200 };
    const s = workerSettings(testSettings('n', 1, { limits, tunnelQueueBudgetBytes: 1000 }), 2);
    assert.deepEqual(s.limits, { ...limits, handshakeRate: 100 });
    assert.equal(s.tunnelQueueBudgetBytes, 500);
    assert.ok(s.sharedSlots?.connections instanceof SharedArrayBuffer);
    assert.ok(s.sharedSlots?.redirects instanceof SharedArrayBuffer, 'open redirects: one set for the node');
  });

  it('holds a data plane to a new share of the handshake rate once the number serving changes', async () => {
    const limits = { maxConnections: 16384, maxPerSource: 1024, maxPendingHandshakes: 100, maxPendingPerSource: 100, handshakeRate: 200 };
    const data = new DataPlane(workerSettings(testSettings('n', 0, { limits }), 1), { log: silent, stallProbe: { probe: () => undefined, reset: (x: net.Socket) => x.destroy() } });
    const fake = () => Object.assign(new EventEmitter(), { remoteAddress: IP.outside, resetAndDestroy() { return this; } }) as unknown as net.Socket;
    const admitted = (n: number) => Array.from({ length: n }).filter(() => data.ctx.admitHandshake(fake())).length;
    try {
      assert.equal(admitted(10), 10, 'a burst of twice 200');
      data.reshare(workerShares(testSettings('n', 0, { limits: { ...limits, handshakeRate: 2 } }), 2));
      assert.equal(admitted(10), 2, 'one of two data planes: 1 a second, bursts of 2');
    } finally {
      await data.close(() => 0);
    }
  });

  it('gives every data plane of the node one set of open redirects, which a delivery on any of them avoids', async () => {
    const s = workerSettings(testSettings('n', 0), 2);
    const deps = { log: silent, stallProbe: { probe: () => undefined, reset: (x: net.Socket) => x.destroy() } };
    const [one, two] = [new DataPlane(s, deps), new DataPlane({ ...s, ownSlots: sharedCounters() }, deps)];
    try {
      const release = two.ctx.redirects.add(IP.web, 40_000, IP.db, 8080);
      assert.equal(one.ctx.redirects.has(IP.web, 40_000, IP.db, 8080), true, 'held on the other data plane');
      release();
      assert.equal(one.ctx.redirects.has(IP.web, 40_000, IP.db, 8080), false);
    } finally {
      await Promise.all([one.close(() => 0), two.close(() => 0)]);
    }
  });

  /**
   * node-b's data planes on ports of their own, one here (as the agent runs it, with the original
   * destination the entry injects) and one in a thread, holding at most 10 connections; `fill`
   * tries 16 plaintext connections and keeps those served in `held`.
   */
  async function limitedTo10(): Promise<{ limited: DataPlaneWorkers; held: net.Socket[]; fill(label: string): Promise<net.Socket[]> }> {
    const own = { outbound: await freePort(), inboundPlaintext: await freePort(), tunnel: await freePort() };
    const appPort = Number(process.env.MESHLET_TEST_APP_PORT);
    const limited = new DataPlaneWorkers({
      workers: 2, log: silent, logBase: {},
      settings: testSettings('node-b', own.tunnel, { ports: own, agentPorts: Object.values(own), accessLog: false, limits: { ...testSettings('n', 1).limits, maxConnections: 10 } }),
      entry: new URL('../support/workers-entry.ts', import.meta.url),
      inThisThread: {
        log: silent, stallProbe: { probe: () => undefined, reset: (s) => s.destroy() },
        originalDestination: (s) => ({ ip: s.localAddress ?? '', port: s.localPort === own.inboundPlaintext ? appPort : s.localPort ?? 0, family: 4 }),
      },
    });
    const held: net.Socket[] = [];
    const fill = async (label: string) => {
      const tries = await Promise.allSettled(Array.from({ length: 16 }, (_, i) => echoed(() => net.connect({ host: IP.db, port: own.inboundPlaintext, localAddress: IP.outside }), `${label} ${i}`)));
      const got = tries.flatMap((t) => (t.status === 'fulfilled' ? [t.value] : []));
      held.push(...got);
      return got;
    };
    return { limited, held, fill };
  }

  it('holds the node\'s connection limit across data planes in this thread and a worker', async () => {
    const { limited, held, fill } = await limitedTo10();
    assert.equal(limited.threads.length, 1, 'one worker thread beside this one');
    try {
      limited.apply(snapshot(certsB));
      await limited.listen();
      await fill('try');
      assert.equal(held.length, 10, 'ten served in all, whichever data plane took each');
      const dump = await limited.dump();
      assert.equal(dump.connections.open.length, 10);
      assert.equal(dump.connections.totals.failed, 6);
    } finally {
      for (const s of held) s.destroy();
      await limited.close(() => 0);
    }
  });

  it('gives back the slots a worker held when it died, so the node\'s limit is whole again', async () => {
    const { limited, held, fill } = await limitedTo10();
    try {
      limited.apply(snapshot(certsB));
      await limited.listen();
      assert.equal((await fill('before')).length, 10);
      const onThread = (await limited.dump()).connections.open.filter((c) => c.worker === 1).length;
      // 16 connections spread by their 4-tuples: all on one data plane with odds of 2^-15.
      assert.ok(onThread > 0 && onThread < 10, `${onThread} of 10 on the worker thread`);
      // The thread dies with its connections open (a bug would be why); a replacement starts.
      const [dead] = limited.threads;
      await dead!.terminate();
      await eventually('a replacement', () => limited.replaced === 1 && limited.threads[0] !== dead);
      for (const s of held.splice(0)) s.destroy();
      await eventually('every connection closed', async () => (await limited.dump()).connections.open.length === 0);
      // Before, the dead thread's slots stayed taken: 10 minus what it held were served.
      const again = await fill('after');
      assert.equal(again.length, 10, `${again.length} served after the thread that held ${onThread} died`);
    } finally {
      for (const s of held) s.destroy();
      await limited.close(() => 0);
    }
  });

  it('starts a second data plane only when the first is busy, and retires it when quiet without ending its connections', async () => {
    const own = { outbound: await freePort(), inboundPlaintext: await freePort(), tunnel: await freePort() };
    const appPort = Number(process.env.MESHLET_TEST_APP_PORT);
    let busy = 0;
    let samples = 0;
    const grown = new DataPlaneWorkers({
      workers: 2, minWorkers: 1, log: silent, logBase: {},
      settings: testSettings('node-b', own.tunnel, { ports: own, agentPorts: Object.values(own), accessLog: false }),
      entry: new URL('../support/workers-entry.ts', import.meta.url),
      inThisThread: {
        log: silent, stallProbe: { probe: () => undefined, reset: (s) => s.destroy() },
        originalDestination: (s) => ({ ip: s.localAddress ?? '', port: s.localPort === own.inboundPlaintext ? appPort : s.localPort ?? 0, family: 4 }),
      },
      // The event loops' utilization, as the test says; busy or quiet at once counts.
      demand: { sustainMs: 0, retireAfterMs: 0, settleMs: 0, sampleMs: 20, utilization: () => { samples++; return busy; } },
    });
    const connect = (label: string) => Promise.all(Array.from({ length: 16 }, (_, i) => echoed(() => net.connect({ host: IP.db, port: own.inboundPlaintext, localAddress: IP.outside }), `${label} ${i}`)));
    const openOn = async () => (await grown.dump()).connections.open.map((c) => c.worker ?? 0);
    // The data planes holding `open`, the connections just made (beside `others` held open), which then close.
    const workersOf = async (open: net.Socket[], others = 0) => {
      const all = await openOn();
      for (const s of open) s.destroy();
      await eventually('closed', async () => (await openOn()).length === others);
      return new Set(all);
    };
    const held: net.Socket[] = [];
    try {
      grown.apply(snapshot(certsB));
      await grown.listen();
      await eventually('samples taken while quiet', () => samples >= 5);
      assert.equal(grown.workers, 1, 'quiet: one data plane');
      assert.equal(grown.threads.length, 0, 'and no worker thread');
      assert.deepEqual(await workersOf(await connect('quiet')), new Set([0]));

      busy = 0.9;
      await eventually('a second data plane', () => grown.workers === 2);
      // 16 connections by their 4-tuples: all on one of two data planes with odds of 2^-15.
      await eventually('connections held on both', async () => {
        held.push(...await connect('busy'));
        if (new Set(await openOn()).size === 2) return true;
        for (const s of held.splice(0)) s.destroy();
        return false;
      }, 20_000, 100);
      assert.deepEqual([grown.workers, grown.threads.length], [2, 1], 'still busy, but never more than --workers');
      const [thread] = grown.threads;
      const exited = new Promise((resolve) => thread!.once('exit', resolve));

      busy = 0;
      await eventually('one serving again', () => grown.workers === 1);
      // The retired one takes no new connections, and finishes the ones it holds.
      const onFirst = async () => (await openOn()).filter((w) => w === 0).length;
      const heldOnFirst = await onFirst();
      const after = await connect('after');
      assert.equal(await onFirst(), heldOnFirst + after.length, 'every new connection on data plane 0');
      await workersOf(after, held.length);
      for (const [i, s] of held.entries()) assert.equal(await again(s, `still ${i}`), `still ${i}`);
      assert.deepEqual(new Set(await openOn()), new Set([0, 1]), 'the retiring one still counts its connections');
      for (const s of held.splice(0)) s.destroy();
      await exited;
      await eventually('every connection closed', async () => (await openOn()).length === 0);
    } finally {
      for (const s of held) s.destroy();
      await grown.close(() => 0);
    }
  });

  it('asks the control plane\'s probe gate, and takes its word for a while', async () => {
    let now = 0;
    const asked: Array<[number, string]> = [];
    const v = new WorkerVouching(1_000, (id, ip) => asked.push([id, ip]), () => now);
    const first = v.ensure(IP.db);
    assert.ok(first, 'not heard of yet: asked');
    v.settle(asked[0]![0], undefined);
    await first;
    assert.equal(v.ensure(IP.db), undefined, 'vouched for a moment ago: no round trip');
    now = 1_001;
    const again = v.ensure(IP.db);
    assert.ok(again, 'stale: asked again');
    v.settle(asked[1]![0], 'gate write failed');
    await assert.rejects(again, /gate write failed/);
    assert.deepEqual(asked.map(([, ip]) => ip), [IP.db, IP.db]);
  });

  it('serves tunnels and plaintext from both workers on the same ports, seen as one data plane', async () => {
    const tunnelled = await Promise.all([0, 1, 2].map((i) => echoed(viaTunnel, `through the tunnel ${i}`)));
    // Each connection's 4-tuple picks its worker: 32 land on one worker with odds of 2^-31.
    const direct = await Promise.all(Array.from({ length: 32 }, (_, i) => echoed(plaintext, `plaintext ${i}`)));
    const dump = await b.dump();
    assert.equal(dump.connections.open.length, 35);
    assert.deepEqual(new Set(dump.connections.open.filter((c) => c.direction === 'inbound_plaintext').map((c) => c.worker)), new Set([0, 1]));
    assert.equal(dump.connections.open.filter((c) => c.direction === 'inbound' && c.mutualTls).length, 3);
    assert.equal(dump.openConnections.inbound_plaintext, 32);
    assert.deepEqual(vouchedFor.slice(0, 1), [IP.db], 'the delivery asked the control plane\'s probe gate');
    for (const s of [...tunnelled, ...direct]) s.end();
    // Every connection counted once across the threads, opened and closed, at a scrape.
    await eventually('every close in the metrics', async () => {
      const m = parseMetrics((await metrics.text()).body);
      return sum(m, 'meshlet_tcp_connections_closed_total', { reporter: 'destination' }) === 35 ? m : undefined;
    });
    const m = parseMetrics((await metrics.text()).body);
    assert.equal(sum(m, 'meshlet_tcp_connections_opened_total', { reporter: 'destination', connection_security_policy: 'mutual_tls' }), 3);
    assert.equal(sum(m, 'meshlet_tcp_connections_opened_total', { reporter: 'destination', connection_security_policy: 'none' }), 32);
    assert.equal(sum(m, 'meshlet_connections_open'), 0);
  });

  it('collects garbage in each worker thread on request (a memory target), and goes on serving', async () => {
    // Connections leave garbage behind in both workers' heaps.
    for (const s of await Promise.all(Array.from({ length: 16 }, (_, i) => echoed(plaintext, `garbage ${i}`)))) s.destroy();
    const [thread] = b.threads;
    const before = (await thread!.getHeapStatistics()).used_heap_size;
    b.collectGarbage('major');
    // Messages reach a worker in order: once it answers the dump, it has collected.
    await b.dump();
    const after = (await thread!.getHeapStatistics()).used_heap_size;
    assert.ok(after < before, `the worker's heap ${before} -> ${after} bytes`);
    const s = await echoed(plaintext, 'after the collection');
    s.destroy();
  });

  it('replaces a worker that died, with the last snapshot and its share of the ports', async () => {
    const [dead] = b.threads;
    await dead!.terminate();
    await eventually('a replacement', () => b.replaced === 1 && b.threads[0] !== dead);
    // The replacement listens again: connections reach both workers, and each is served.
    const spread = await eventually('connections on both workers again', async () => {
      const open = await Promise.all(Array.from({ length: 32 }, (_, i) => echoed(plaintext, `after the replacement ${i}`)));
      const workers = new Set((await b.dump()).connections.open.map((c) => c.worker));
      for (const s of open) s.destroy();
      return workers.size === 2 ? workers : undefined;
    }, 20_000, 200);
    assert.deepEqual(spread, new Set([0, 1]));
  });

  it('drains: open connections go on after close began, new ones are refused, then it ends', async () => {
    const open = await echoed(plaintext, 'before the close');
    let closed = false;
    const closing = b.close(() => Date.now() + 20_000).then(() => { closed = true; });
    await eventually('the ports closed', () => new Promise<boolean>((resolve) => {
      const s = plaintext();
      s.once('connect', () => { s.destroy(); resolve(false); });
      s.once('error', () => resolve(true));
    }));
    const back = new Promise<string>((resolve) => open.once('data', (d: Buffer) => resolve(d.toString())));
    open.write('during the drain');
    assert.equal(await back, 'during the drain');
    assert.equal(closed, false, 'the drain waits for the open connection');
    open.end();
    await closing;
    assert.equal(closed, true);
  });
});
