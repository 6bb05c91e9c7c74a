// `meshlet policy suggest` on traffic the real agents carried and logged: the suggested policies,
// applied, let exactly the observed connections through (cross-node, same-node, plaintext from
// outside the mesh) and deny every connection that was never observed.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { runCommand } from '../../src/capture/exec.ts';
import { MeshLab } from '../../src/demo/lab.ts';
import { CLI } from '../../src/demo/lab-spec.ts';
import { eventually } from '../support/wait.ts';

describe('policy suggest from the agents\' logs', () => {
  let lab: MeshLab;

  before(async () => {
    lab = await MeshLab.create({
      nodes: [
        { name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }, { name: 'cache', namespace: 'shop' }, { name: 'outsider', namespace: 'legacy', captured: false }] },
        { name: 'node-b', pods: [{ name: 'db', namespace: 'shop' }] },
      ],
    });
    try {
      await lab.startMesh();
      for (const [pod, port] of [['db', 8080], ['db', 9090], ['cache', 8080]] as const) await lab.startServer(pod, port);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  const reach = async (from: string, to: string, port: number) => (await lab.client(from, { host: lab.pod(to).ip, port, bytes: 1024, timeoutMs: 5_000 })).ok;

  it('proposes policies that admit what was observed and nothing else', async () => {
    // The traffic to learn from: cross-node, same node, and plaintext from a pod outside the mesh.
    const observed = [['web', 'db', 8080], ['web', 'cache', 8080], ['outsider', 'db', 9090]] as const;
    for (const [from, to, port] of observed) assert.equal(await reach(from, to, port), true, `${from} -> ${to}:${port} before any policy`);
    const logs = [...lab.agents.values()].flatMap((a) => ['--access-log', a.logFile]);
    await eventually('the destinations logged the three connections', async () => {
      const lines = (await Promise.all([...lab.agents.values()].map((a) => lab.processLog(a)))).flat();
      return lines.filter((l) => l.scope === 'access' && l.outcome === 'ok' && (l.reporter === 'destination' || l.route === 'local')).length >= 3;
    });

    const r = await runCommand(process.execPath, [CLI, 'policy', 'suggest', ...logs, '--workloads', lab.workloadsFile, '--output', 'workloads']);
    assert.equal(r.code, 0, r.stderr);
    const { policies } = parse(r.stdout) as { policies: Array<{ name: string; namespace: string; action: string }> };
    assert.deepEqual(policies.map((p) => `${p.namespace}/${p.name}:${p.action}`).sort(), ['shop/allow-cache-observed:ALLOW', 'shop/allow-db-observed:ALLOW'], r.stderr);
    await lab.writeWorkloads({ ...lab.workloadsDocument(), policies });
    await eventually('both agents compiled them', async () => (await Promise.all(lab.meshNodes.map((n) => lab.configDump(n))))
      .every((d) => d.policy.policies.length === 2));

    for (const [from, to, port] of observed) assert.equal(await reach(from, to, port), true, `${from} -> ${to}:${port} was observed: allowed`);
    for (const [from, to, port] of [['cache', 'db', 8080], ['web', 'db', 9090], ['outsider', 'db', 8080], ['outsider', 'cache', 8080]] as const) {
      assert.equal(await reach(from, to, port), false, `${from} -> ${to}:${port} was never observed: denied`);
    }
  });
});
