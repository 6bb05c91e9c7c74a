// A node whose kube-proxy runs iptables in legacy mode, while the image's iptables defaults to nft:
// `meshlet init` and the agents must write into legacy, where kube-proxy's chains are, or meshlet's
// jump "ahead of kube-proxy" would sit in another table the kernel orders as it likes. Two nodes
// with kube-proxy's hint chain and a KUBE-SERVICES chain made by iptables-legacy before meshlet
// comes; everything is removed in after(), also when a test fails.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MeshLab } from '../../src/demo/lab.ts';

const PORT = 8080;

describe('iptables in legacy mode on the node (the image defaults to nft)', () => {
  let lab: MeshLab;
  const exec = async (node: string, cmd: string, args: string[], input?: string) => {
    const r = await lab.topo.exec(lab.node(node).ns, cmd, args, input);
    assert.equal(r.code, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    lab = await MeshLab.create({
      trustDomain: 'legacy.test',
      nodes: [{ name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }] }, { name: 'node-b', pods: [{ name: 'db', namespace: 'shop' }] }],
    });
    try {
      // What kubelet and kube-proxy leave in legacy mode: the hint chain, and kube-proxy's own jump.
      for (const node of ['node-a', 'node-b']) {
        await exec(node, 'iptables-legacy-restore', ['--noflush'], [
          '*mangle', ':KUBE-IPTABLES-HINT - [0:0]', 'COMMIT',
          '*nat', ':KUBE-SERVICES - [0:0]', '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES', 'COMMIT', '',
        ].join('\n'));
      }
      await lab.startMesh();
      await lab.startServer('db', PORT);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  it('installs capture in the legacy tables, its jump ahead of kube-proxy\'s, and nothing in nft', async () => {
    for (const node of ['node-a', 'node-b']) {
      const legacy = await exec(node, 'iptables-legacy-save', ['-t', 'nat']);
      const jumps = legacy.split('\n').filter((l) => l.startsWith('-A PREROUTING'));
      assert.match(jumps[0] ?? '', /-j MESHLET_PREROUTING$/, `${node}: meshlet's jump is not first: ${jumps.join(' | ')}`);
      assert.ok(jumps.some((l) => l.endsWith('-j KUBE-SERVICES')), 'kube-proxy\'s jump stays');
      const nft = await exec(node, 'iptables-nft-save', []);
      assert.doesNotMatch(nft, /MESHLET/, `${node}: meshlet wrote into the nft tables too`);
      // The agent decided the same, and its capture check reads the legacy tables (it is ready).
      const log = await lab.agentLog(node);
      assert.ok(log.some((l) => l.msg === 'iptables mode' && l.iptablesMode === 'legacy' && /hint chain/.test(l.reason)), `${node}: the agent did not say legacy`);
    }
  });

  it('carries traffic across the nodes through the legacy-mode capture', async () => {
    const r = await lab.client('web', { host: lab.pod('db').ip, port: PORT, bytes: 100_000 });
    assert.ok(r.ok, JSON.stringify(r.results));
    const inbound = (await lab.accessLog('node-b')).filter((l) => l.direction === 'inbound' && l.outcome === 'ok');
    assert.ok(inbound.length > 0, 'the connection did not go through node-b\'s agent');
  });
});
