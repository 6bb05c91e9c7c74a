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

  it('with --audit proposes the same to watch first: what they would deny is counted and logged, nothing refused', async () => {
    const logs = [...lab.agents.values()].flatMap((a) => ['--access-log', a.logFile]);
    const r = await runCommand(process.execPath, [CLI, 'policy', 'suggest', ...logs, '--workloads', lab.workloadsFile, '--output', 'workloads', '--audit']);
    assert.equal(r.code, 0, r.stderr);
    const { policies } = parse(r.stdout) as { policies: Array<{ name: string; namespace: string; action: string }> };
    assert.deepEqual(policies.map((p) => `${p.namespace}/${p.name}:${p.action}`).sort(), ['shop/audit-cache-observed:AUDIT', 'shop/audit-db-observed:AUDIT'], r.stderr);
    await lab.writeWorkloads({ ...lab.workloadsDocument(), policies });
    await eventually('both agents compiled them', async () => (await Promise.all(lab.meshNodes.map((n) => lab.configDump(n))))
      .every((d) => d.policy.policies.length === 2 && d.policy.policies.every((p: { action: string }) => p.action === 'AUDIT')));

    const unmatched = async () => Number(/meshlet_policy_decisions_total\{action="audit_unmatched",policy="shop\/audit-db-observed"\} (\d+)/.exec(await lab.metrics(lab.node('node-b')))?.[1] ?? 0);
    const before = await unmatched();
    assert.equal(await reach('web', 'db', 8080), true, 'observed: allowed');
    for (const [from, port] of [['cache', 8080], ['web', 9090]] as const) assert.equal(await reach(from, 'db', port), true, `${from} -> db:${port}: AUDIT does not refuse`);
    await eventually('the two never observed counted as what the policy would deny', async () => (await unmatched()) - before === 2);
    const toDb = async () => (await lab.accessLog('node-b')).filter((l) => l.reporter === 'destination' && l.dst?.addr?.startsWith(`${lab.pod('db').ip}:`));
    await eventually('the last one logged', async () => (await toDb()).at(-1)?.dst.addr.endsWith(':9090'));
    const tail = (await toDb()).slice(-3);
    assert.deepEqual(tail.map((l) => [l.src?.principal?.split('/').pop(), l.dst.addr.split(':')[1], l.audit ?? null, l.audit_unmatched ?? null]), [
      ['web', '8080', ['shop/audit-db-observed'], null],
      ['cache', '8080', null, ['shop/audit-db-observed']],
      ['web', '9090', null, ['shop/audit-db-observed']],
    ]);
  });
});
