// Removing meshlet as README says, with traffic flowing the whole time: (1) release every pod (the
// capture annotation goes; here the workloads file says captured: false), (2) once every agent's
// captured set is empty, stop the agents (`kubectl delete -k manifests/`), (3) `meshlet init
// --cleanup` on each node. No connection may be refused at any step, and afterwards nothing of
// meshlet's may be left in any node's tables, sets, rules or routes. node-b is a bridge node, so
// the nftables bridge table of the anti-spoofing must go too.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { SOURCE_ROUTE_TABLE } from '../../src/capture/rules.ts';
import { MeshLab } from '../../src/demo/lab.ts';
import type { NodeNs } from '../../src/netns/topology.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;

describe('removing meshlet from a running mesh', () => {
  let lab: MeshLab;
  /** Each node's rules before `meshlet init`: what must be there again at the end. */
  const pristine = new Map<string, string>();

  const sh = async (node: NodeNs, cmd: string, args: string[]): Promise<string> => {
    const r = await lab.topo.exec(node.ns, cmd, args);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} in ${node.name}: ${r.stderr}`);
    return r.stdout;
  };
  /** Every line of the node's packet-path state that names meshlet, its table or its mark. */
  const meshletLines = async (node: NodeNs): Promise<string[]> => {
    const dumps = [
      await sh(node, 'iptables-save', []), await sh(node, 'ip6tables-save', []), await sh(node, 'nft', ['list', 'ruleset']),
      await sh(node, 'ipset', ['list', '-n']), await sh(node, 'ip', ['-4', 'route', 'show', 'table', String(SOURCE_ROUTE_TABLE)]),
    ];
    return dumps.join('\n').split('\n').filter((l) => /meshlet/i.test(l) || / table \d+|^local /.test(l));
  };
  const rules = async (node: NodeNs) => `${await sh(node, 'ip', ['-4', 'rule', 'show'])}${await sh(node, 'ip', ['-6', 'rule', 'show'])}`;

  before(async () => {
    lab = await MeshLab.create({
      nodes: [
        { name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }, { name: 'cart', namespace: 'shop' }] },
        { name: 'node-b', bridge: true, pods: [{ name: 'db', namespace: 'shop' }] },
      ],
    });
    try {
      for (const node of lab.meshNodes) pristine.set(node.name, await rules(node));
      await lab.startMesh();
      await lab.startServer('db', PORT);
      await lab.startServer('cart', PORT);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  it('refuses no connection from release to cleanup, and leaves nothing behind', async () => {
    for (const node of lab.meshNodes) assert.ok((await meshletLines(node)).length > 0, `no meshlet state on ${node.name} to remove: the check could not fail`);
    // Connections one after the other, across nodes both ways, for the whole removal.
    const results: Array<{ path: string; ok: boolean; step: string; error?: string }> = [];
    let step = 'meshed';
    let running = true;
    const loop = async (from: string, to: string) => {
      while (running) {
        const r = await lab.client(from, { host: lab.pod(to).ip, port: PORT, timeoutMs: 10_000 });
        results.push({ path: `${from}->${to}`, ok: r.ok, step, error: r.results[0]?.error });
      }
    };
    const traffic = [loop('web', 'db'), loop('db', 'cart')];
    try {
      await eventually('traffic flows', () => results.filter((r) => r.ok).length >= 4, 30_000);
      assert.ok((await lab.accessLog('node-b')).some((l) => l.direction === 'inbound'), 'the traffic was meshed before the removal');

      step = 'released';
      const doc = lab.workloadsDocument() as { workloads: Array<{ captured?: boolean }> };
      for (const w of doc.workloads) w.captured = false;
      await lab.writeWorkloads(doc);
      // README's step 2 waits for `meshlet status` to list no captured workload on any node.
      for (const node of lab.meshNodes) {
        await eventually(`${node.name}'s captured set empties`, async () => (await lab.ipsetMembers(node)).size === 0, 30_000, 200);
        await eventually(`${node.name}'s status lists no captured workload`, async () =>
          /WORKLOADS on this node \(0 captured/.test(await lab.meshlet(['status'], node.ns)), 10_000, 200);
      }
      const sinceRelease = results.length;
      await eventually('traffic after the release', () => results.slice(sinceRelease).filter((r) => r.ok).length >= 4, 30_000);

      step = 'agents stopped';
      for (const node of lab.meshNodes) assert.equal(await lab.stopAgent(node.name), 0, `${node.name}'s agent exits cleanly`);
      const sinceStop = results.length;
      await eventually('traffic with no agent', () => results.slice(sinceStop).filter((r) => r.ok).length >= 4, 30_000);

      step = 'cleaned up';
      for (const node of lab.meshNodes) await lab.meshlet(['init', '--cleanup'], node.ns);
      const sinceCleanup = results.length;
      await eventually('traffic after the cleanup', () => results.slice(sinceCleanup).filter((r) => r.ok).length >= 4, 30_000);
    } finally {
      running = false;
      await Promise.all(traffic);
    }
    const refused = results.filter((r) => !r.ok);
    // On failure, what the agents refused or reset, and why.
    const why = refused.length === 0 ? [] : (await Promise.all([...lab.agents.values()].map((a) => lab.processLog(a)))).flat()
      .filter((l) => l.scope === 'access' && l.outcome !== 'ok').map((l) => `${l.node} ${l.time} ${l.error}: ${l.reason}`);
    assert.deepEqual(refused, [], `a connection was refused during the removal; the agents said: ${why.join('; ')}`);
    for (const step of ['meshed', 'released', 'agents stopped', 'cleaned up']) {
      assert.ok(results.some((r) => r.step === step), `no connection was made while ${step}`);
    }
    for (const node of lab.meshNodes) {
      assert.deepEqual(await meshletLines(node), [], `meshlet state left on ${node.name}`);
      assert.equal(await rules(node), pristine.get(node.name), `${node.name}'s policy rules differ from before the install`);
    }
  });
});
