// The data path end to end: two node namespaces with two captured pods each, a registered pod that
// is not captured, and a pod the registry has never heard of. Real `meshlet init`, real agents, real
// TCP clients and servers that know nothing of the mesh. Everything is removed in after(), also when
// a test fails.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { HEAP_HEADROOM_MIB } from '../../src/config/agent.ts';
import { MeshLab } from '../../src/demo/lab.ts';
import { processCpuSeconds as cpuSeconds } from '../../src/demo/process-stats.ts';
import { tlsRecordTypes } from '../../src/netns/pcap.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;
const MB = 1024 * 1024;
const TD = 'e2e.test';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;

/** The node-side address of a pod's veth: a pod can reach its node's agent ports there. */
const gatewayOf = (podIp: string) => podIp.replace(/\.\d+$/, '.1');

describe('data path in network namespaces', { concurrency: false }, () => {
  let lab: MeshLab;

  before(async () => {
    lab = await MeshLab.create({
      trustDomain: TD,
      nodes: [
        { name: 'node-a', pods: [
          { name: 'a1', namespace: 'shop', serviceAccount: 'web' },
          { name: 'a2', namespace: 'shop', serviceAccount: 'cart' },
          { name: 'stranger', registered: false },
        ] },
        { name: 'node-b', pods: [
          { name: 'b1', namespace: 'pay', serviceAccount: 'payments' },
          { name: 'b2', namespace: 'pay', serviceAccount: 'ledger' },
          { name: 'outside', namespace: 'legacy', captured: false },
        ] },
      ],
    });
    await lab.startMesh();
    for (const p of ['a2', 'b1', 'b2', 'outside']) await lab.startServer(p, PORT);
  });

  after(async () => { await lab?.destroy(); });

  it('puts exactly the captured pods of each node into its ipset and issues their certificates', async () => {
    const a = lab.node('node-a');
    const b = lab.node('node-b');
    assert.deepEqual(await lab.ipsetMembers(a), new Set([lab.pod('a1').ip, lab.pod('a2').ip]));
    assert.deepEqual(await lab.ipsetMembers(b), new Set([lab.pod('b1').ip, lab.pod('b2').ip]));
    const dump = await lab.configDump(a);
    assert.equal(dump.ready, true);
    // Once up, the agent keeps its old-generation headroom (heap-headroom.ts).
    assert.equal(dump.heap.headroomMiB, HEAP_HEADROOM_MIB);
    // Its data plane frees the tunnel's dead chunks every 4 MiB (young-collection.ts).
    assert.equal(dump.heap.youngCollectionMiB, 4);
    assert.ok(dump.heap.growingPercent > 0, JSON.stringify(dump.heap));
    assert.deepEqual(dump.certificates.map((c: any) => c.spiffeId).sort(), [id('shop', 'cart'), id('shop', 'web')]);
    for (const c of dump.certificates) assert.ok(Date.parse(c.notAfter) > Date.now(), `${c.spiffeId} valid`);
  });

  it('carries 10 MB each way across nodes through the mTLS tunnel, byte for byte', async () => {
    const r = await lab.client('a1', { host: lab.pod('b1').ip, port: PORT, bytes: 10 * MB, timeoutMs: 60_000 });
    assert.ok(r.ok, JSON.stringify(r.results));
    assert.equal(r.results[0]!.received, 10 * MB);
    assert.equal(r.results[0]!.receivedSha, r.results[0]!.sentSha);

    const out = await eventually('outbound access line on node-a', async () =>
      (await lab.accessLog('node-a')).find((l) => l.route === 'tunnel' && l.bytes_sent >= 10 * MB));
    assert.equal(out.src.principal, id('shop', 'web'));
    assert.equal(out.dst.principal, id('pay', 'payments'));
    assert.equal(out.outcome, 'ok');
    assert.equal(out.bytes_received, 10 * MB, 'the echo came back in full');
    // The destination agent saw the source's verified identity and the source pod's address.
    const inbound = await eventually('inbound access line on node-b', async () =>
      (await lab.accessLog('node-b')).find((l) => l.direction === 'inbound' && l.bytes_sent >= 10 * MB));
    assert.equal(inbound.src.principal, id('shop', 'web'));
    assert.equal(inbound.src.ip, lab.pod('a1').ip);
    assert.equal(inbound.src.workload, 'shop/a1');
    assert.equal(inbound.dst.workload, 'pay/b1');
  });

  it('carries 10 MB each way between pods of the same node, with the same identity decisions', async () => {
    const r = await lab.client('a1', { host: lab.pod('a2').ip, port: PORT, bytes: 10 * MB, timeoutMs: 60_000 });
    assert.ok(r.ok, JSON.stringify(r.results));
    const line = await eventually('local access line', async () =>
      (await lab.accessLog('node-a')).find((l) => l.route === 'local' && l.bytes_sent >= 10 * MB));
    assert.equal(line.src.principal, id('shop', 'web'));
    assert.equal(line.dst.principal, id('shop', 'cart'));
  });

  it('shows the application its real client address: across nodes, on one node, and from outside the mesh', async () => {
    const whoami = async (from: string, to: string) => {
      const r = await lab.client(from, { host: lab.pod(to).ip, port: PORT, mode: 'whoami', timeoutMs: 10_000 });
      assert.ok(r.ok, JSON.stringify(r.results));
      return r.results[0]!.reply;
    };
    assert.equal(await whoami('a1', 'b1'), lab.pod('a1').ip, 'tunnel: the source pod, not node-b');
    assert.equal(await whoami('a1', 'a2'), lab.pod('a1').ip, 'same node: the source pod, not node-a');
    assert.equal(await whoami('outside', 'b2'), lab.pod('outside').ip, 'plaintext from outside the mesh');
    // Many at once on one node: each delivery takes a source port that no open redirected
    // connection of the same pod to the same destination holds.
    const many = await lab.client('a1', { host: lab.pod('a2').ip, port: PORT, mode: 'whoami', connections: 100, timeoutMs: 20_000 });
    assert.ok(many.ok, JSON.stringify(many.results.filter((x) => !x.ok)));
    assert.deepEqual(new Set(many.results.map((x) => x.reply)), new Set([lab.pod('a1').ip]));
  });

  it('propagates half-close both ways, across nodes and on one node', async () => {
    for (const to of ['b2', 'a2']) {
      // The server answers only after the client's FIN reached it; the answer then flows back.
      const r = await lab.client('a1', { host: lab.pod(to).ip, port: PORT, bytes: 3 * MB, mode: 'halfclose' });
      assert.ok(r.ok, `${to}: ${JSON.stringify(r.results)}`);
      assert.equal(r.results[0]!.reply, `${3 * MB} ${r.results[0]!.sentSha}`);
    }
  });

  it('runs 50 concurrent connections over one pooled tunnel session per (source, destination) and worker', async () => {
    const [x, y] = await Promise.all([
      lab.client('a1', { host: lab.pod('b1').ip, port: PORT, bytes: 256 * 1024, connections: 50 }),
      lab.client('a2', { host: lab.pod('b2').ip, port: PORT, bytes: 256 * 1024, connections: 50, mode: 'halfclose' }),
    ]);
    assert.equal(x.results.filter((r) => r.ok).length, 50, JSON.stringify(x.results.filter((r) => !r.ok)));
    assert.equal(y.results.filter((r) => r.ok).length, 50, JSON.stringify(y.results.filter((r) => !r.ok)));
    const dump = await lab.configDump(lab.node('node-a'));
    const pools = dump.pools as Array<{ key: string; worker?: number }>;
    // One session per (source identity, destination pod) for up to 100 connections at a time, in
    // each data-plane worker the kernel handed some of the pair's connections to.
    const perWorker = pools.map((p) => `${p.key}@${p.worker ?? 0}`);
    assert.equal(new Set(perWorker).size, perWorker.length, `one session per pair and worker: ${perWorker.join(', ')}`);
    assert.equal(dump.workers, 2);
    assert.deepEqual([...new Set(pools.map((p) => p.key))].sort(), [
      `${id('shop', 'cart')}|${lab.pod('b2').ip}`,
      `${id('shop', 'web')}|${lab.pod('b1').ip}`,
      `${id('shop', 'web')}|${lab.pod('b2').ip}`,
    ]);
  });

  it('opens another session for a pair once its sessions carry 100 connections each', async () => {
    const pair = `${id('shop', 'web')}|${lab.pod('b1').ip}`;
    // 250 at once over the 2 workers: each worker's share is past one session's 100.
    const r = await lab.client('a1', { host: lab.pod('b1').ip, port: PORT, bytes: MB, connections: 250 });
    assert.equal(r.results.filter((x) => x.ok).length, 250, JSON.stringify(r.results.filter((x) => !x.ok)));
    const sessions = ((await lab.configDump(lab.node('node-a'))).pools as Array<{ key: string; worker?: number }>).filter((p) => p.key === pair);
    const most = Math.max(...[0, 1].map((w) => sessions.filter((p) => (p.worker ?? 0) === w).length));
    assert.ok(most >= 2, `250 concurrent connections on ${most} session(s) in one worker at most`);
  });

  it('sends only TLS between the nodes: no plaintext payload on the wire, TLS records on port 15008', async () => {
    const marker = 'e2e-plaintext-marker-7f3a ';
    const capture = await lab.startPacketCapture(lab.node('node-a'));
    let segments;
    try {
      const r = await lab.client('a1', { host: lab.pod('b1').ip, port: PORT, bytes: 2 * MB, pattern: marker });
      assert.ok(r.ok, JSON.stringify(r.results));
    } finally {
      segments = await capture.stop();
    }
    const tunnel = segments.filter((s) => (s.dstPort === 15008 || s.srcPort === 15008) && s.payload.length > 0);
    // Segment counts vary with offloads (GRO/TSO merge segments); the byte count says what crossed.
    const tunnelBytes = tunnel.reduce((n, s) => n + s.payload.length, 0);
    assert.ok(tunnelBytes > 2 * MB, `the 2 MB echo crossed as only ${tunnelBytes} tunnel bytes`);
    assert.equal(segments.filter((s) => s.payload.includes(marker)).length, 0, 'plaintext payload seen on the inter-node link');
    assert.equal(segments.filter((s) => s.dstPort === PORT || s.srcPort === PORT).length, 0, 'app port seen on the inter-node link');
    const types = tlsRecordTypes(tunnel);
    assert.ok(types.has(0x17), 'TLS application data records');
  });

  it('refuses a source it does not know and never forwards its bytes', async () => {
    const stranger = lab.pod('stranger');
    // Not in the registry, so not captured: it can still dial the agent's outbound port directly.
    const r = await lab.client('stranger', { host: gatewayOf(stranger.ip), port: 15001, bytes: 1024, timeoutMs: 10_000 });
    assert.equal(r.ok, false);
    assert.notEqual(r.results[0]!.error, 'timeout');
    assert.equal(r.results[0]!.received, 0);
    const line = await eventually('unknown_source access line', async () =>
      (await lab.accessLog('node-a')).find((l) => l.error === 'unknown_source' && l.src.ip === stranger.ip));
    assert.equal(line.outcome, 'error');
    assert.equal(line.bytes_sent, 0);
    assert.equal(line.route, undefined, 'no route was chosen');
  });

  it('refuses a captured pod that dials the agent port itself (no loop)', async () => {
    const a1 = lab.pod('a1');
    const r = await lab.client('a1', { host: gatewayOf(a1.ip), port: 15001, bytes: 1024, timeoutMs: 10_000 });
    assert.equal(r.ok, false);
    assert.notEqual(r.results[0]!.error, 'timeout');
    await eventually('self_call access line', async () =>
      (await lab.accessLog('node-a')).find((l) => l.error === 'self_call' && l.src.ip === a1.ip));
  });

  it('leaves traffic to a destination outside the mesh alone: plain TCP from the pod, never through the agent', async () => {
    const marker = 'e2e-outside-marker ';
    const capture = await lab.startPacketCapture(lab.node('node-a'));
    let segments;
    try {
      const r = await lab.client('a1', { host: lab.pod('outside').ip, port: PORT, bytes: 512 * 1024, pattern: marker });
      assert.ok(r.ok, JSON.stringify(r.results));
    } finally {
      segments = await capture.stop();
    }
    // Plain TCP to the app port from the pod's own address, as the application sent it.
    assert.ok(segments.some((s) => s.dstPort === PORT && s.src === lab.pod('a1').ip && s.payload.includes(marker)));
    // Capture redirects only destinations in the mesh: the agent never had the connection.
    const seen = (await lab.accessLog('node-a')).filter((l) => l.dst?.addr === `${lab.pod('outside').ip}:${PORT}`);
    assert.deepEqual(seen, []);
  });

  it('follows the workloads file: removed pods leave the ipset, a bad file changes nothing', async () => {
    const a = lab.node('node-a');
    const a2 = lab.pod('a2');
    await lab.writeWorkloads(lab.workloadsDocument((p) => p.name !== 'a2'));
    await eventually('a2 removed from the ipset', async () => !(await lab.ipsetMembers(a)).has(a2.ip));
    let dump = await lab.configDump(a);
    assert.ok(!dump.workloads.some((w: any) => w.name === 'a2'));
    assert.ok(!dump.certificates.some((c: any) => c.spiffeId === id('shop', 'cart')), 'certificate dropped with the workload');

    // A broken file: rejected with a clear error, and the last good registry stays in force.
    const rejected = async () => (await lab.agentLog('node-a')).filter((l) => /last good registry stays in force/.test(l.msg ?? ''));
    const before = (await rejected()).length;
    await lab.writeWorkloads({ trustDomain: TD, nodes: [{ name: 'node-a' }], workloads: [{ name: 'x', ip: 'not-an-ip' }] });
    const err = await eventually('rejection logged', async () => (await rejected())[before]);
    assert.match(err.err, /ip/);
    dump = await lab.configDump(a);
    assert.equal(dump.workloads.length, 4, "the last good registry (without a2)");
    assert.deepEqual(await lab.ipsetMembers(a), new Set([lab.pod('a1').ip]));
    const still = await lab.client('a1', { host: lab.pod('b1').ip, port: PORT, bytes: 64 * 1024 });
    assert.ok(still.ok, 'traffic still flows on the last good registry');

    await lab.writeWorkloads();
    await eventually('a2 back in the ipset', async () => (await lab.ipsetMembers(a)).has(a2.ip));
    await lab.waitReady(a);
    const back = await lab.client('a2', { host: lab.pod('b1').ip, port: PORT, bytes: 64 * 1024 });
    assert.ok(back.ok, JSON.stringify(back.results));
  });

  /**
   * a1 writes 64 MB to a server that never reads, the agent on `victim` is killed while the bytes
   * are under way (`route` on node-a's books), and the client must see a reset: not a hang, and
   * not a clean end it could mistake for a finished peer.
   */
  async function killMidTransfer(to: string, route: string, victim: string): Promise<void> {
    const pending = lab.client('a1', { host: lab.pod(to).ip, port: PORT, bytes: 64 * MB, mode: 'hold', timeoutMs: 60_000 });
    await eventually('transfer under way', async () =>
      (await lab.configDump(lab.node('node-a'))).connections.open.some((c: any) => c.route === route && c.bytesSent > 0));
    await lab.stopAgent(victim, 'SIGKILL');
    const r = await pending;
    assert.equal(r.ok, false);
    assert.match(String(r.results[0]!.error), /^(ECONNRESET|EPIPE)$/, 'the client was left hanging or saw a clean end');
  }

  it('does not leave a client hanging when the destination agent dies mid-transfer', async () => {
    await killMidTransfer('b1', 'tunnel', 'node-b');
    // Nothing leaks on the surviving agent: the connection is gone from its books, and it is idle
    // (a half-dead socket it failed to close would keep it spinning).
    await eventually('connection released on node-a', async () =>
      !(await lab.configDump(lab.node('node-a'))).connections.open.some((c: any) => c.route === 'tunnel'));
    const pid = lab.agents.get('node-a')!.child.pid!;
    const cpu0 = cpuSeconds(pid);
    await new Promise((res) => setTimeout(res, 2000));
    assert.ok(cpuSeconds(pid) - cpu0 < 1, `node-a agent used ${cpuSeconds(pid) - cpu0} CPU s in 2 s while idle`);
  });

  it('does not leave a client hanging when its own agent dies mid-transfer', async () => {
    await killMidTransfer('a2', 'local', 'node-a');
  });
});
