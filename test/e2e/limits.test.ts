// Attack: lock a node's pods out by filling its agent's connection budget with sockets that never
// authenticate. Before, every data port shared one budget, so sockets held open on the tunnel port
// (no TLS handshake, from anywhere) took the connections the node's own pods needed. Now sockets in
// their handshake have a budget of their own, and handshakes are rate-limited per source. The node
// here has a deliberately small budget (40 connections); everything is removed in after().
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createInterface } from 'node:readline';
import { MeshLab } from '../../src/demo/lab.ts';
import { parseMetrics, sum } from '../support/prometheus.ts';

const PORT = 8080;
const HOSTILE = join(import.meta.dirname, '../support/hostile.ts');

describe('limits that match trust', { concurrency: false }, () => {
  let lab: MeshLab;

  before(async () => {
    lab = await MeshLab.create({
      // Handshakes that never start are cut after 20 s (the attack holds its sockets for 8 s).
      agentArgs: ['--max-connections', '40', '--handshake-timeout', '20s', '--handshake-rate', '50'],
      nodes: [
        { name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }] },
        { name: 'node-b', pods: [{ name: 'db', namespace: 'shop' }, { name: 'app', namespace: 'shop' }] },
      ],
    });
    await lab.startMesh();
    await lab.startServer('db', PORT);
  });
  after(async () => { await lab?.destroy(); });

  it('sockets held on the tunnel port without a handshake do not lock the node\'s pods out', async () => {
    // 60 sockets from node-a's address on db's tunnel port: more than node-b's whole budget.
    const hostile = lab.topo.spawn(lab.node('node-a').ns, process.execPath, [HOSTILE, '--attack', 'hold-sockets', '--target', lab.pod('db').ip, '--ca-dir', lab.caDir, '--count', '60']);
    const lines = createInterface({ input: hostile.stdout! })[Symbol.asyncIterator]();
    const holding = JSON.parse(String((await lines.next()).value));
    // The per-source cap of the pending budget (64 by default) admits them all: they are held.
    assert.ok(holding.holding >= 40, JSON.stringify(holding));
    // Meanwhile node-b's own pod opens 20 connections to its neighbour at once (40 sockets on the
    // agent: 20 accepted on 15001, 20 deliveries), and node-a's web one through the tunnel.
    const local = await lab.client('app', { host: lab.pod('db').ip, port: PORT, connections: 20, together: true, timeoutMs: 10_000 });
    assert.ok(local.ok, `the node's pods were locked out: ${JSON.stringify(local.results.filter((r) => !r.ok).slice(0, 3))}`);
    const remote = await lab.client('web', { host: lab.pod('db').ip, port: PORT, timeoutMs: 10_000 });
    assert.ok(remote.ok, JSON.stringify(remote.results));
    const result = JSON.parse(String((await lines.next()).value));
    assert.ok(result.stillOpen >= 40, `the held sockets were dropped before the local connections ran: ${JSON.stringify(result)}`);
  });

  it('caps handshakes a second per source', async () => {
    const refused = async () => sum(parseMetrics(await lab.metrics(lab.node('node-b'))), 'meshlet_connections_refused_total', { error: 'handshake_rate' });
    const before = await refused();
    const r = await lab.topo.exec(lab.node('node-a').ns, process.execPath, [HOSTILE, '--attack', 'connection-flood', '--target', lab.pod('db').ip, '--ca-dir', lab.caDir, '--count', '300']);
    assert.equal(r.code, 0, r.stderr);
    // 300 connections in well under a second against 50/s with a burst of 100.
    assert.ok((await refused()) - before >= 100, `only ${(await refused()) - before} refused by the handshake rate`);
    // The source's established session is untouched: web's next connection rides it.
    const ok = await lab.client('web', { host: lab.pod('db').ip, port: PORT, timeoutMs: 10_000 });
    assert.ok(ok.ok, JSON.stringify(ok.results));
  });
});
