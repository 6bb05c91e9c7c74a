// MeshPolicy and mTLS modes end to end: real agents in node namespaces enforce policies from the
// workloads file on tunnelled (cross-node) and local (same-node) connections and on plaintext from
// outside the mesh; a policy change applies to new connections while an open one keeps flowing.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MeshLab, PEER } from '../../src/demo/lab.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;

describe('policy in network namespaces', { concurrency: false }, () => {
  let lab: MeshLab;
  const id = (ns: string, sa: string) => `spiffe://${lab.trustDomain}/ns/${ns}/sa/${sa}`;

  before(async () => {
    lab = await MeshLab.create({
      nodes: [
        { name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }, { name: 'cache', namespace: 'shop' }, { name: 'outsider', namespace: 'legacy', captured: false }] },
        { name: 'node-b', pods: [{ name: 'db', namespace: 'shop' }, { name: 'api', namespace: 'blog' }] },
      ],
    });
    try {
      await lab.startMesh();
      for (const p of ['db', 'cache', 'api']) await lab.startServer(p, PORT);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  /** Rewrites the workloads file with these policies and namespace modes, and waits until both agents compiled them. */
  async function apply(extra: { policies?: Array<{ name: string; namespace: string; action: string; [k: string]: unknown }>; namespaces?: Array<{ name: string; mtls: string }> }): Promise<void> {
    await lab.writeWorkloads({ ...lab.workloadsDocument(), ...extra });
    const want = JSON.stringify({
      policies: (extra.policies ?? []).map((p) => `${p.namespace}/${p.name}:${p.action}`).sort(),
      mtls: Object.fromEntries((extra.namespaces ?? []).map((n) => [n.name, n.mtls])),
    });
    await eventually('both agents took the new file', async () => {
      const dumps = await Promise.all(lab.meshNodes.map((n) => lab.configDump(n)));
      return dumps.every((d) => JSON.stringify({ policies: d.policy.policies.map((p: any) => `${p.id}:${p.action}`).sort(), mtls: d.policy.mtls }) === want);
    }, 5_000);
  }

  const reach = async (from: string, to: string) => (await lab.client(from, { host: lab.pod(to).ip, port: PORT, bytes: 4096, timeoutMs: 5_000 })).ok;
  const denials = async (node: string, policy: string) =>
    ((await lab.configDump(lab.node(node))).policy.decisions as Array<{ action: string; policy: string; count: number }>)
      .find((d) => d.action === 'deny' && d.policy === policy)?.count ?? 0;

  it('allows everything while there are no policies', async () => {
    assert.equal(await reach('web', 'db'), true, 'cross-node');
    assert.equal(await reach('web', 'cache'), true, 'same node');
    assert.equal(await reach('api', 'db'), true);
  });

  it('a DENY stops cross-node and same-node connections, is logged with its policy and counted', async () => {
    await apply({ policies: [{ name: 'no-web', namespace: 'shop', action: 'DENY', rules: [{ from: [{ principals: [id('shop', 'web')] }] }] }] });
    const [b0, a0] = [await denials('node-b', 'shop/no-web'), await denials('node-a', 'shop/no-web')];
    assert.equal(await reach('web', 'db'), false, 'cross-node: denied at the destination agent');
    assert.equal(await reach('web', 'cache'), false, 'same node: denied on the local path');
    assert.equal(await reach('api', 'db'), true, 'other sources unaffected');
    assert.equal(await denials('node-b', 'shop/no-web'), b0 + 1);
    assert.equal(await denials('node-a', 'shop/no-web'), a0 + 1);
    const line = await eventually('inbound denial on node-b', async () =>
      (await lab.accessLog('node-b')).find((l) => l.error === 'policy_denied' && l.policy === 'shop/no-web' && l.src?.principal === id('shop', 'web')));
    assert.equal(line.bytes_sent, 0, 'not one byte reached the destination');
  });

  it('an ALLOW policy blocks everything it does not allow, only for the workloads it selects', async () => {
    await apply({ policies: [{ name: 'db-clients', namespace: 'shop', selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: [{ from: [{ principals: [id('shop', 'web')] }], to: [{ ports: [PORT] }] }] }] });
    assert.equal(await reach('web', 'db'), true);
    assert.equal(await reach('api', 'db'), false, 'api is not allowed');
    assert.equal(await reach('api', 'cache'), true, 'cache is not selected by the policy');
    await eventually('no-allow-matched on node-b', async () =>
      (await lab.accessLog('node-b')).find((l) => l.error === 'policy_denied' && l.policy === 'no-allow-matched' && l.src?.principal === id('blog', 'api')));
  });

  it('strict mTLS refuses plaintext from outside the mesh; permissive lets it through', async () => {
    await apply({ namespaces: [{ name: 'shop', mtls: 'permissive' }] });
    assert.equal(await reach('outsider', 'db'), true, 'permissive: plaintext reaches db');
    await apply({ namespaces: [{ name: 'shop', mtls: 'strict' }] });
    assert.equal(await reach('outsider', 'db'), false, 'strict: plaintext refused');
    assert.equal(await reach('web', 'db'), true, 'strict: mTLS from the mesh still works');
    assert.equal(await reach('outsider', 'api'), true, 'blog stays permissive');
    await eventually('mtls-strict refusal on node-b', async () =>
      (await lab.accessLog('node-b')).find((l) => l.direction === 'inbound_plaintext' && l.error === 'policy_denied' && l.policy === 'mtls-strict'));
    await apply({});
  });

  it('a policy change applies to new connections within a second, without restart or cutting open ones', async () => {
    await apply({});
    const pid = lab.agents.get('node-b')!.child.pid;
    // One long connection web -> db, echoing every 100 ms for 4 s.
    const chat = lab.topo.exec(lab.pod('web').ns, process.execPath, [PEER, 'chat', '--host', lab.pod('db').ip, '--port', String(PORT), '--duration', '4000', '--interval', '100']);
    await new Promise((r) => setTimeout(r, 800));
    const changedAt = Date.now();
    await lab.writeWorkloads({ ...lab.workloadsDocument(), policies: [{ name: 'no-web', namespace: 'shop', action: 'DENY', rules: [{ from: [{ principals: [id('shop', 'web')] }] }] }] });
    // The moment the destination agent has the new policy in force is its 'policies compiled' line.
    const compiled = await eventually('node-b compiled the new policy', async () =>
      (await lab.agentLog('node-b')).find((l) => l.msg === 'policies compiled' && l.policies === 1 && Date.parse(l.time) >= changedAt), 5_000);
    const tookMs = Date.parse(compiled.time) - changedAt;
    assert.ok(tookMs < 1_000, `the change took ${tookMs} ms to apply`);
    assert.equal(await reach('web', 'db'), false, 'a new connection after the change is refused');
    const r = JSON.parse((await chat).stdout);
    assert.equal(r.ok, true, `the open connection was cut: ${JSON.stringify(r)}`);
    assert.ok(r.rounds >= 25, `only ${r.rounds} echo rounds`);
    assert.equal(lab.agents.get('node-b')!.child.pid, pid, 'no restart');
    await apply({});
  });
});
