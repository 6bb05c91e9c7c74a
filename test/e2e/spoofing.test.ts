// Attack: a pod sends with a co-located captured pod's address, to be taken for it (the agent knows
// a workload by its source address). The attacker puts the victim's address on its own interface
// (a pod with CAP_NET_ADMIN; raw packets with CAP_NET_RAW are the same on the wire) and connects to
// a pod in the mesh. Its packets must be dropped before capture, never reach the agent under the
// victim's identity (no connection tracked for them), be counted, and leave the victim working.
// Two CNI shapes, nodes with rp_filter off as many are: point-to-point (a veth and a /32 route per
// pod: the reverse-path check catches it) and a bridge (all pods on cni0, one route for all: only
// binding each captured address to its bridge port does). With iptables, then nftables.
// Everything is removed in after(), also on failure.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MeshLab } from '../../src/demo/lab.ts';
import { parseMetrics, sum } from '../support/prometheus.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;
const TD = 'spoof.test';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;

for (const [backend, bridge] of [['iptables', false], ['nftables', false], ['iptables', true], ['nftables', true]] as const) {
  describe(`a pod cannot take a co-located pod's identity by its address (${backend}, ${bridge ? 'bridge' : 'veth per pod'})`, { concurrency: false }, () => {
    let lab: MeshLab;

    before(async () => {
      lab = await MeshLab.create({
        trustDomain: TD,
        captureBackend: backend,
        nodes: [
          { name: 'node-a', bridge, pods: [{ name: 'victim', namespace: 'bank', serviceAccount: 'vault' }, { name: 'attacker', namespace: 'shop', serviceAccount: 'web' }] },
          { name: 'node-b', pods: [{ name: 'db', namespace: 'bank', serviceAccount: 'db' }] },
        ],
      });
      await lab.startMesh();
      await lab.startServer('db', PORT);
    });

    after(async () => { await lab?.destroy(); });

    /** Connections the node's conntrack holds from `ip` to db's port. */
    async function tracked(ip: string): Promise<string[]> {
      const r = await lab.topo.exec(lab.node('node-a').ns, 'cat', ['/proc/net/nf_conntrack']);
      assert.equal(r.code, 0, r.stderr);
      return r.stdout.split('\n').filter((l) => l.includes(`src=${ip} dst=${lab.pod('db').ip} `) && l.includes(`dport=${PORT} `));
    }

    const dropped = async () => sum(parseMetrics(await lab.metrics(lab.node('node-a'))), 'meshlet_spoofed_packets_dropped_total', {});

    it('drops the attacker\'s packets before capture and counts them; the victim keeps its identity', async () => {
      const victim = lab.pod('victim');
      const attacker = lab.pod('attacker');
      assert.deepEqual(await tracked(victim.ip), [], 'nothing from the victim to db yet');
      const before = await dropped();

      const take = await lab.topo.exec(attacker.ns, 'ip', ['addr', 'add', `${victim.ip}/32`, 'dev', 'eth0']);
      assert.equal(take.code, 0, take.stderr);
      const r = await lab.client('attacker', { host: lab.pod('db').ip, port: PORT, from: victim.ip, mode: 'whoami', timeoutMs: 3_000 });
      assert.equal(r.ok, false, `the attacker was answered as ${r.results[0]?.reply}`);
      // Dropped in raw PREROUTING, before conntrack: the connection was never tracked, so never
      // redirected to the agent. Without the check it was, as the victim's (REDIRECT to 15001).
      assert.deepEqual(await tracked(victim.ip), [], 'the spoofed SYN reached capture');
      // The agent reads the rule's counter at its capture check (every 5 s).
      await eventually('the drop counted in the metric', async () => (await dropped()) > before, 15_000, 250);
      assert.ok((await lab.agentLog('node-a')).some((l) => /anti-spoofing/.test(l.msg ?? '') && l.dropped > 0), 'the drop logged');
      if (bridge) {
        // The attacker's port now holds the victim's address too: the binding stays with the victim's, on record.
        await eventually('the claim logged', async () => (await lab.agentLog('node-a')).find((l) => l.err === 'address_contested' && l.ip === victim.ip && l.boundTo), 15_000, 250);
      }

      // The victim, from its own interface, is unaffected and keeps its identity.
      const ok = await lab.client('victim', { host: lab.pod('db').ip, port: PORT, mode: 'whoami', timeoutMs: 10_000 });
      assert.equal(ok.results[0]?.reply, victim.ip, JSON.stringify(ok.results));
      const line = await eventually('the victim\'s connection at db', async () =>
        (await lab.accessLog('node-b')).find((l) => l.direction === 'inbound' && l.src?.ip === victim.ip));
      assert.equal(line.src.principal, id('bank', 'vault'));
      assert.equal((await lab.accessLog('node-b')).filter((l) => l.direction === 'inbound').length, 1, 'db saw only the victim\'s own connection');
    });
  });
}
