// Attack: a pod reaches a STRICT pod around the mesh with UDP (the mesh carries TCP only). With
// `--non-tcp-to-strict drop` the node drops non-TCP forwarded to its STRICT pods, from a pod on the
// same node, from another node and from outside the mesh; ICMP and the node's own traffic pass,
// permissive pods are untouched, and TCP still goes through the mesh. Off by default (README).
// With iptables, then nftables. Everything is removed in after(), also when a test fails.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MeshLab, PEER } from '../../src/demo/lab.ts';
import { eventually } from '../support/wait.ts';

const UDP_PORT = 5353;
const TCP_PORT = 8080;

for (const backend of ['iptables', 'nftables'] as const) {
  describe(`non-TCP to STRICT pods with --non-tcp-to-strict drop (${backend})`, { concurrency: false }, () => {
    let lab: MeshLab;

    before(async () => {
      lab = await MeshLab.create({
        trustDomain: 'udp.test',
        captureBackend: backend,
        agentArgs: ['--non-tcp-to-strict', 'drop'],
        nodes: [
          { name: 'node-a', pods: [{ name: 'vault', namespace: 'bank' }, { name: 'shop', namespace: 'shop' }, { name: 'neighbour', namespace: 'shop' }] },
          { name: 'node-b', pods: [{ name: 'remote', namespace: 'shop' }, { name: 'outsider', namespace: 'legacy', captured: false }] },
        ],
      });
      await lab.startMesh();
      await lab.writeWorkloads({ ...lab.workloadsDocument(), namespaces: [{ name: 'bank', mtls: 'strict' }] });
      await eventually('vault in the STRICT set', async () => (await lab.ipsetMembers(lab.node('node-a'), 'meshlet-strict')).has(lab.pod('vault').ip));
      for (const p of ['vault', 'shop']) {
        const child = lab.topo.spawn(lab.pod(p).ns, process.execPath, [PEER, 'udp-serve', '--port', String(UDP_PORT)]);
        lab.servers.push(child);
        await new Promise((r) => child.stdout?.once('data', r));
      }
      await lab.startServer('vault', TCP_PORT);
    });

    after(async () => { await lab?.destroy(); });

    const ping = async (ns: string, to: string) => {
      const r = await lab.topo.exec(ns, process.execPath, [PEER, 'udp-ping', '--host', lab.pod(to).ip, '--port', String(UDP_PORT), '--timeout', '1500']);
      return (JSON.parse(r.stdout) as { ok: boolean }).ok;
    };

    it('drops UDP to a STRICT pod from a pod on its node, on another node and outside the mesh', async () => {
      const [same, other, outside] = await Promise.all([ping(lab.pod('neighbour').ns, 'vault'), ping(lab.pod('remote').ns, 'vault'), ping(lab.pod('outsider').ns, 'vault')]);
      assert.deepEqual({ same, other, outside }, { same: false, other: false, outside: false });
    });

    it('lets the node\'s own UDP, ICMP, UDP to permissive pods and TCP through the mesh pass', async () => {
      assert.equal(await ping(lab.node('node-a').ns, 'vault'), true, 'the node itself');
      assert.equal(await ping(lab.pod('neighbour').ns, 'shop'), true, 'a permissive pod');
      const icmp = await lab.topo.exec(lab.pod('remote').ns, 'ping', ['-c', '1', '-W', '2', lab.pod('vault').ip]);
      assert.equal(icmp.code, 0, `ICMP: ${icmp.stdout}${icmp.stderr}`);
      const tcp = await lab.client('neighbour', { host: lab.pod('vault').ip, port: TCP_PORT, timeoutMs: 10_000 });
      assert.ok(tcp.ok, JSON.stringify(tcp.results));
    });
  });
}
