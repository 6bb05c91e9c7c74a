// Releasing a pod from the mesh refuses no connection (src/workloads/release-grace.ts): node-a's
// agent reads the workloads file every 3 s, node-b's every 100 ms, so for up to 3 s after db is
// released node-a still tunnels web's connections to db's port 15008. db's own agent lets go last.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MeshLab } from '../../src/demo/lab.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;

describe('releasing a pod from the mesh', () => {
  let lab: MeshLab;
  before(async () => {
    lab = await MeshLab.create({
      nodes: [
        { name: 'node-a', pods: [{ name: 'web' }] },
        { name: 'node-b', pods: [{ name: 'db' }] },
      ],
    });
    try {
      await lab.startMesh();
      await lab.startServer('db', PORT);
      // node-a sees changes late, as a slow watch or poll would.
      await lab.stopAgent('node-a');
      await lab.startAgent(lab.node('node-a'), ['--workloads-poll', '3s']);
      await lab.waitReady(lab.node('node-a'));
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  it('refuses no connection while the agents see the release one after the other', async () => {
    const db = lab.pod('db');
    assert.ok((await lab.client('web', { host: db.ip, port: PORT })).ok, 'meshed before the release');
    const doc = lab.workloadsDocument() as { workloads: Array<{ name: string; captured?: boolean }> };
    for (const w of doc.workloads) if (w.name === 'db') w.captured = false;
    const accessBefore = (await lab.accessLog('node-b')).length;
    await lab.writeWorkloads(doc);
    const released = Date.now();
    await eventually('node-b read the release', async () => (await lab.agentLog('node-b')).some((l) => l.msg === 'registry updated' && Date.parse(l.time) >= released - 50), 5_000, 50);
    // Connections one after the other until node-a has seen it too, and a little after.
    const results: Array<{ ok: boolean; at: number }> = [];
    const seenByA = async () => (await lab.agentLog('node-a')).some((l) => l.msg === 'registry updated' && Date.parse(l.time) >= released - 50);
    while (!(await seenByA()) || results.length < 5) {
      const r = await lab.client('web', { host: db.ip, port: PORT, timeoutMs: 10_000 });
      results.push({ ok: r.ok, at: Date.now() - released });
      assert.ok(Date.now() - released < 30_000, 'node-a never read the release');
    }
    assert.deepEqual(results.filter((r) => !r.ok), [], `refused during the release: ${JSON.stringify(results)}`);
    // The window was real: after node-b released db, node-a still tunnelled to it, and db's agent served them.
    const tunnelled = (await lab.accessLog('node-b')).slice(accessBefore).filter((l) => l.route === 'inbound' && Date.parse(l.time) >= released);
    assert.ok(tunnelled.length > 0, 'no tunnel reached node-b after the release: the test did not exercise the window');
    // After the grace, db is out of node-b's capture entirely.
    await eventually('db leaves node-b\'s captured set', async () => !(await lab.ipsetMembers(lab.node('node-b'))).has(db.ip), 20_000, 200);
    assert.ok((await lab.client('web', { host: db.ip, port: PORT })).ok, 'reached directly once released');
  });
});
