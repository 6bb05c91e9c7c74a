// Attack: clients that leave early (SECURITY.md, "Nothing leaks when a client leaves early"). A
// captured pod connects and resets at once, 1,000 times on each path, while the agent is still
// setting the upstream up; a hostile peer sends 1,000 CONNECTs and cancels each with RST_STREAM.
// Afterwards no upstream connection is left at the destination pods (ss in their namespaces), no
// tunnel stream and no connection record in either agent (/config_dump). Without the fix each
// left upstream connection stayed until the idle timeout (1 h): a pod could fill a database's
// max_connections without holding a socket itself.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MeshLab, PEER } from '../../src/demo/lab.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;
const ATTEMPTS = 1000;
const CLUSTER_IP = '10.96.0.20';
const HOSTILE = join(import.meta.dirname, '../support/hostile.ts');

describe('clients that leave early leave nothing behind', { concurrency: false }, () => {
  let lab: MeshLab;

  before(async () => {
    lab = await MeshLab.create({
      trustDomain: 'early.test',
      nodes: [
        { name: 'node-a', pods: [
          { name: 'web', namespace: 'shop', serviceAccount: 'web' },
          { name: 'cart', namespace: 'shop', serviceAccount: 'cart' },
          { name: 'plain', namespace: 'legacy', captured: false },
        ] },
        { name: 'node-b', pods: [{ name: 'db', namespace: 'shop', serviceAccount: 'db', labels: { app: 'db' } }] },
      ],
      services: [{ name: 'db', namespace: 'shop', clusterIP: CLUSTER_IP, ports: [{ port: 80, targetPort: PORT }], selector: { app: 'db' } }],
    });
    await lab.startMesh();
    for (const p of ['db', 'cart']) await lab.startServer(p, PORT);
  });

  after(async () => { await lab?.destroy(); });

  /** Established connections at a pod's server port. */
  async function serverConnections(pod: string): Promise<number> {
    const r = await lab.topo.exec(lab.pod(pod).ns, 'ss', ['-Htn', 'state', 'established', `( sport = :${PORT} )`]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.split('\n').filter(Boolean).length;
  }

  /** What both agents still hold: open connection records and tunnel streams. */
  async function agentsHold(): Promise<{ records: number; streams: number }> {
    let records = 0;
    let streams = 0;
    for (const n of lab.meshNodes) {
      const dump = await lab.configDump(n);
      records += dump.connections.open.length;
      streams += dump.pools.reduce((sum: number, p: { streams: number }) => sum + p.streams, 0);
    }
    return { records, streams };
  }

  /** Waits until nothing is left anywhere; returns how long that took after the attack ended. */
  async function nothingLeft(pods: string[]): Promise<number> {
    const ended = Date.now();
    let last = {};
    try {
      await eventually('no upstream connection, stream or record left', async () => {
        const upstream = (await Promise.all(pods.map(serverConnections))).reduce((a, b) => a + b, 0);
        const held = await agentsHold();
        last = { upstream, ...held };
        return upstream === 0 && held.records === 0 && held.streams === 0;
      }, 10_000, 100);
    } catch (err) {
      throw new Error(`${(err as Error).message}; still held: ${JSON.stringify(last)}`);
    }
    return Date.now() - ended;
  }

  async function resets(from: string, host: string, port: number): Promise<{ connected: number }> {
    const r = await lab.topo.exec(lab.pod(from).ns, process.execPath, [PEER, 'resets', '--host', host, '--port', String(port), '--count', String(ATTEMPTS)]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  }

  const paths = [
    { name: 'across nodes (tunnel)', from: 'web', host: () => lab.pod('db').ip, port: PORT, server: 'db' },
    { name: 'on one node', from: 'web', host: () => lab.pod('cart').ip, port: PORT, server: 'cart' },
    { name: 'to a Service\'s cluster IP', from: 'web', host: () => CLUSTER_IP, port: 80, server: 'db' },
    { name: 'plaintext from outside the mesh', from: 'plain', host: () => lab.pod('cart').ip, port: PORT, server: 'cart' },
  ];

  for (const path of paths) {
    it(`connect-then-reset ${ATTEMPTS} times ${path.name}`, async (t) => {
      const r = await resets(path.from, path.host(), path.port);
      assert.ok(r.connected > ATTEMPTS / 2, `only ${r.connected} of ${ATTEMPTS} connected`);
      const ms = await nothingLeft([path.server]);
      t.diagnostic(`${path.name}: ${r.connected} connected and reset; nothing left ${ms} ms after the last`);
      // The path still works afterwards.
      const ok = await lab.client(path.from, { host: path.host(), port: path.port, bytes: 4096, timeoutMs: 10_000 });
      assert.ok(ok.ok, JSON.stringify(ok.results));
    });
  }

  it(`CONNECT then RST_STREAM ${ATTEMPTS} times on the tunnel port`, async (t) => {
    const r = await lab.topo.exec(lab.node('node-a').ns, process.execPath,
      [HOSTILE, '--attack', 'connect-reset', '--target', lab.pod('db').ip, '--ca-dir', lab.caDir, '--count', String(ATTEMPTS)]);
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.equal(report.outcome, 'cancelled', r.stdout);
    assert.equal(report.sent, ATTEMPTS);
    const ms = await nothingLeft(['db']);
    t.diagnostic(`${report.sent} CONNECTs cancelled (${report.answered} answered before the cancel); nothing left ${ms} ms after`);
  });
});
