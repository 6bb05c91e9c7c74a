// MeshPolicy and mTLS modes end to end: real agents in node namespaces enforce policies from the
// workloads file on tunnelled (cross-node) and local (same-node) connections and on plaintext from
// outside the mesh; a change applies to new connections and closes the open ones it now refuses.
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

  /** Long connections (an echo every 100 ms), the open record of each on its agent, and their results. */
  async function chats(pairs: Array<[from: string, to: string]>, durationMs = 8_000) {
    const running = pairs.map(([from, to]) => ({
      from, to,
      result: lab.topo.exec(lab.pod(from).ns, process.execPath, [PEER, 'chat', '--host', lab.pod(to).ip, '--port', String(PORT), '--duration', String(durationMs), '--interval', '100'])
        .then((r) => JSON.parse(r.stdout) as { ok: boolean; rounds: number; error?: string }),
    }));
    // Open on their deciding agents: web's on node-a (outbound), the others on node-b.
    await eventually('every connection open', async () => {
      const open = (await Promise.all(lab.meshNodes.map((n) => lab.configDump(n)))).flatMap((d) => d.connections.open);
      return pairs.every(([from, to]) => open.some((c: any) => c.sourceIp === lab.pod(from).ip && c.destination === `${lab.pod(to).ip}:${PORT}` && c.establishedAt));
    });
    return running;
  }

  /** The access line of the connection from `from` to `to` that a re-check ended, and ms from `since` to it. */
  async function cut(node: string, from: string, to: string, since: number) {
    const line = await eventually(`${from} -> ${to} ended on ${node}`, async () => (await lab.accessLog(node))
      .find((l) => Date.parse(l.time) >= since && l.src?.ip === lab.pod(from).ip && l.dst?.addr === `${lab.pod(to).ip}:${PORT}` && /re-checked after a change/.test(l.reason ?? '')), 5_000);
    return { line, ms: Date.parse(line.time) - since };
  }

  it('a policy change closes the open connections it now denies within a second, and only those', async (t) => {
    await apply({});
    const pid = lab.agents.get('node-b')!.child.pid;
    const running = await chats([['web', 'db'], ['web', 'cache'], ['api', 'db'], ['api', 'cache']]);
    const changedAt = Date.now();
    await lab.writeWorkloads({ ...lab.workloadsDocument(), policies: [{ name: 'no-web', namespace: 'shop', action: 'DENY', rules: [{ from: [{ principals: [id('shop', 'web')] }] }] }] });
    const tunnel = await cut('node-b', 'web', 'db', changedAt);
    const local = await cut('node-a', 'web', 'cache', changedAt);
    for (const { line } of [tunnel, local]) {
      assert.equal(line.error, 'policy_denied');
      assert.equal(line.policy, 'shop/no-web', 'the deciding policy is named');
    }
    t.diagnostic(`change to close: tunnelled ${tunnel.ms} ms, same node ${local.ms} ms (the file source polls every 500 ms)`);
    assert.ok(tunnel.ms < 3_000 && local.ms < 3_000, `took ${tunnel.ms} / ${local.ms} ms`);
    const [webDb, webCache, apiDb, apiCache] = await Promise.all(running.map((r) => r.result));
    assert.equal(webDb!.ok, false, 'web -> db kept flowing after the DENY');
    assert.equal(webCache!.ok, false, 'web -> cache kept flowing after the DENY');
    assert.ok(apiDb!.ok && apiDb!.rounds >= 50, `an allowed connection was disturbed: ${JSON.stringify(apiDb)}`);
    assert.ok(apiCache!.ok && apiCache!.rounds >= 50, `an allowed connection was disturbed: ${JSON.stringify(apiCache)}`);
    assert.equal(await reach('web', 'db'), false, 'a new connection after the change is refused');
    assert.equal(lab.agents.get('node-b')!.child.pid, pid, 'no restart');
    await apply({});
  });

  it('a relabel under an allow-nothing policy refuses new CONNECTs on a pooled session and closes open ones', async () => {
    const locked = { name: 'locked', namespace: 'shop', selector: { matchLabels: { tier: 'locked' } }, action: 'ALLOW', rules: [] };
    await apply({ policies: [locked] });
    // The session web -> db is pooled and open (the chat holds it) when db is relabelled.
    const [running] = await chats([['web', 'db']]);
    const doc = lab.workloadsDocument() as { workloads: Array<{ name: string; labels?: Record<string, string> }> };
    for (const w of doc.workloads) if (w.name === 'db') w.labels = { ...w.labels, tier: 'locked' };
    const changedAt = Date.now();
    await lab.writeWorkloads({ ...doc, policies: [locked] });
    const { line, ms } = await cut('node-b', 'web', 'db', changedAt);
    assert.equal(line.policy, 'no-allow-matched');
    assert.ok(ms < 3_000, `took ${ms} ms`);
    assert.equal((await running!.result).ok, false);
    const pooled = (await lab.configDump(lab.node('node-a'))).pools.some((p: any) => p.key.includes(lab.pod('db').ip));
    assert.equal(await reach('web', 'db'), false, `a new CONNECT${pooled ? ' on the pooled session' : ''} reaches the relabelled pod`);
    await apply({});
  });

  it('strict mTLS closes open plaintext connections to the namespace, and leaves the mesh\'s alone', async (t) => {
    await apply({ namespaces: [{ name: 'shop', mtls: 'permissive' }] });
    const running = await chats([['outsider', 'db'], ['web', 'db']]);
    const changedAt = Date.now();
    await lab.writeWorkloads({ ...lab.workloadsDocument(), namespaces: [{ name: 'shop', mtls: 'strict' }] });
    const { line, ms } = await cut('node-b', 'outsider', 'db', changedAt);
    assert.equal(line.policy, 'mtls-strict');
    t.diagnostic(`permissive -> strict to close: ${ms} ms`);
    const [plain, meshed] = await Promise.all(running.map((r) => r.result));
    assert.equal(plain!.ok, false);
    assert.ok(meshed!.ok, `the mTLS connection was disturbed: ${JSON.stringify(meshed)}`);
    await apply({});
  });
});
