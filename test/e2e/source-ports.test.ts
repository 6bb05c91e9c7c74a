// A pod's address is shared by the pod's kernel and the agent's source-preserving deliveries, and
// neither knows the other's ports. Before, the agent picked delivery ports from the node's
// ephemeral range, the same range a pod's kernel picks from: a delivery that took the 4-tuple of
// one of the pod's own redirected connections (or of one still in the agent's accept queue, or
// held by another worker) had its SYN taken for that connection's and hung until the connect
// timeout, and the client got a reset after 5 s (seen once in CI, 20 connections at once). Here
// the pod's and the node's ranges are narrowed to 128 ports so that the old code collides on
// nearly every round; deliveries now take ports below the pods' range (--source-ports).
// Everything is removed in after().
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MeshLab } from '../../src/demo/lab.ts';

const PORT = 8080;
const RANGE = 'net.ipv4.ip_local_port_range=40000 40127';

describe('delivery source ports', { concurrency: false }, () => {
  let lab: MeshLab;

  before(async () => {
    lab = await MeshLab.create({
      nodes: [{ name: 'node-a', pods: [{ name: 'app', namespace: 'shop' }, { name: 'db', namespace: 'shop' }] }],
    });
    for (const ns of [lab.node('node-a').ns, lab.pod('app').ns]) {
      const r = await lab.topo.exec(ns, 'sysctl', ['-w', RANGE]);
      assert.equal(r.code, 0, r.stderr);
    }
    await lab.startMesh();
    await lab.startServer('db', PORT);
  });
  after(async () => { await lab?.destroy(); });

  it('never take a 4-tuple of the pod\'s own connections, whatever its and the node\'s ephemeral ranges', async () => {
    // Each round: 20 connections open at once from app to db on one node (20 of the pod's ports
    // in flight, 20 deliveries from its address), each ending only once all have their echo.
    for (let round = 1; round <= 3; round++) {
      const r = await lab.client('app', { host: lab.pod('db').ip, port: PORT, connections: 20, together: true, timeoutMs: 15_000 });
      assert.ok(r.ok, `round ${round}: ${JSON.stringify(r.results.filter((x) => !x.ok).map((x) => ({ error: x.error, ms: x.ms })))}`);
    }
    // And the application still sees its real client.
    const who = await lab.client('app', { host: lab.pod('db').ip, port: PORT, mode: 'whoami', timeoutMs: 10_000 });
    assert.equal(who.results[0]?.reply, lab.pod('app').ip);
  });
});
