// Attack: a captured pod uses the agent to reach what it cannot reach alone (SECURITY.md, "A pod
// reaches no more through the mesh"). Each node runs a stand-in for what only the node may reach: a
// metadata server at 169.254.169.254:80 and a port its firewall drops for pods (filter INPUT, as a
// cloud node's host firewall does). A captured pod must fail to reach them exactly as a pod outside
// the mesh does, and reach a pod outside the mesh from its own address, not the node's. With the
// iptables backend, then nftables. Everything is removed in after(), also when a test fails.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MeshLab, PEER } from '../../src/demo/lab.ts';
import type { NodeNs } from '../../src/netns/topology.ts';

const PORT = 8080;
const NODE_ONLY_PORT = 80;
const METADATA_IP = '169.254.169.254';
const POD_CIDR = '10.241.0.0/16';

async function must(lab: MeshLab, ns: string, cmd: string, args: string[]): Promise<void> {
  const r = await lab.topo.exec(ns, cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} in ${ns}: ${r.stderr}`);
}

/** A server only the node may reach: on the node's own addresses and the metadata address, dropped for pods. */
async function nodeOnlyServer(lab: MeshLab, node: NodeNs): Promise<void> {
  await must(lab, node.ns, 'ip', ['addr', 'add', `${METADATA_IP}/32`, 'dev', 'lo']);
  await must(lab, node.ns, 'iptables', ['-A', 'INPUT', '-s', POD_CIDR, '-p', 'tcp', '--dport', String(NODE_ONLY_PORT), '-j', 'DROP']);
  const child = lab.topo.spawn(node.ns, process.execPath, [PEER, 'serve', '--port', String(NODE_ONLY_PORT)]);
  lab.servers.push(child);
  await new Promise<void>((res, rej) => {
    child.stdout?.once('data', () => res());
    child.once('exit', (code) => rej(new Error(`node server on ${node.name} exited ${code}`)));
  });
}

/** Whether `from` (a pod, or a node namespace) gets an answer from host:port, and the address the server saw. */
async function whoami(lab: MeshLab, ns: string, host: string, port: number, timeoutMs = 3_000): Promise<{ ok: boolean; seenAs?: string; error?: string }> {
  const r = await lab.topo.exec(ns, process.execPath, [PEER, 'client', '--host', host, '--port', String(port), '--mode', 'whoami', '--timeout', String(timeoutMs)]);
  if (r.code !== 0) throw new Error(`client in ${ns} failed: ${r.stderr}`);
  const res = (JSON.parse(r.stdout) as { results: Array<{ ok: boolean; reply?: string; error?: string }> }).results[0]!;
  return { ok: res.ok, ...(res.reply ? { seenAs: res.reply } : {}), ...(res.error ? { error: res.error } : {}) };
}

for (const backend of ['iptables', 'nftables'] as const) {
  describe(`a captured pod reaches no more than without the mesh (${backend})`, { concurrency: false }, () => {
    let lab: MeshLab;

    before(async () => {
      lab = await MeshLab.create({
        trustDomain: 'reach.test',
        captureBackend: backend,
        nodes: [
          { name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }, { name: 'plain-a', namespace: 'legacy', captured: false }] },
          { name: 'node-b', pods: [{ name: 'db', namespace: 'shop' }, { name: 'plain-b', namespace: 'legacy', captured: false }] },
        ],
      });
      await lab.startMesh();
      for (const p of ['db', 'plain-a', 'plain-b']) await lab.startServer(p, PORT);
      for (const n of lab.meshNodes) await nodeOnlyServer(lab, n);
    });

    after(async () => { await lab?.destroy(); });

    it('the stand-ins answer the node itself (the refusals below are the firewall\'s, not a dead server)', async () => {
      const a = lab.node('node-a');
      assert.equal((await whoami(lab, a.ns, METADATA_IP, NODE_ONLY_PORT)).ok, true);
      assert.equal((await whoami(lab, a.ns, lab.node('node-b').ip, NODE_ONLY_PORT)).ok, true);
      // And the mesh is in the path: the captured pods talk over it.
      const meshed = await whoami(lab, lab.pod('web').ns, lab.pod('db').ip, PORT);
      assert.equal(meshed.seenAs, lab.pod('web').ip);
      assert.ok((await lab.accessLog('node-a')).some((l) => l.route === 'tunnel' && l.outcome === 'ok'));
    });

    it('keeps the metadata service and the node-only ports out of a captured pod\'s reach, as out of any pod\'s', async () => {
      const targets = [
        { what: 'metadata on its node', host: METADATA_IP },
        { what: 'its own node\'s firewalled port', host: lab.node('node-a').ip },
        { what: 'another node\'s firewalled port', host: lab.node('node-b').ip },
      ];
      // All at once: each refusal is a drop, and so a client timeout.
      const tried = await Promise.all(targets.map(async (t) => ({
        ...t, outside: await whoami(lab, lab.pod('plain-a').ns, t.host, NODE_ONLY_PORT), captured: await whoami(lab, lab.pod('web').ns, t.host, NODE_ONLY_PORT),
      })));
      for (const { outside, captured, ...t } of tried) {
        assert.equal(outside.ok, false, `${t.what}: the firewall stand-in lets pods in`);
        assert.equal(captured.ok, false, `${t.what}: a captured pod reached it through the agent (seen as ${captured.seenAs})`);
        assert.equal(captured.error, outside.error, `${t.what}: refused differently with the mesh`);
      }
      const refused = (await lab.accessLog('node-a')).filter((l) => l.dst?.addr?.endsWith(`:${NODE_ONLY_PORT}`));
      assert.deepEqual(refused, [], 'the agent never saw those connections');
    });

    it('lets a captured pod reach pods outside the mesh from its own address, on its node and another', async () => {
      for (const to of ['plain-a', 'plain-b']) {
        const r = await whoami(lab, lab.pod('web').ns, lab.pod(to).ip, PORT);
        assert.equal(r.ok, true, `${to}: ${r.error}`);
        assert.equal(r.seenAs, lab.pod('web').ip, `${to} saw the node, not the pod`);
      }
    });
  });
}
