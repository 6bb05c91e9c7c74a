// `meshlet check --pre` on a real node namespace: one that looks like a kube-proxy in nftables mode
// behind a bridge CNI, and the same without CAP_NET_ADMIN. The namespace is removed in after().
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { CLI } from '../../src/demo/lab.ts';
import { Topology } from '../../src/netns/topology.ts';

describe('meshlet check --pre on a node', () => {
  let topo: Topology;
  let ns: string;
  const check = (prefix: string[] = []) => topo.exec(ns, prefix.length > 0 ? 'setpriv' : process.execPath, [...prefix, ...(prefix.length > 0 ? [process.execPath] : []), CLI, 'check', '--pre', '--json']);

  before(async () => {
    topo = await Topology.create();
    ns = (await topo.addNode('check', { bridge: true })).ns;
    // kube-proxy's own table in nftables mode.
    const r = await topo.exec(ns, 'nft', ['-f', '-'], 'table ip kube-proxy {\n  chain services { }\n}\n');
    assert.equal(r.code, 0, r.stderr);
  });
  after(async () => { await topo?.destroy(); });

  it('says kube-proxy runs nftables (use --capture-backend nftables) and the CNI is a bridge, and passes', async () => {
    // Rules, chains of its own and sets: iptables-nft may leave a table it created empty, with only
    // its built-in chains, which holds nothing.
    const save = async () => `${(await topo.exec(ns, 'iptables-save', [])).stdout}${(await topo.exec(ns, 'ipset', ['list', '-n'])).stdout}`.split('\n')
      .filter((l) => !l.startsWith('#') && !l.startsWith('*') && l !== 'COMMIT' && !/^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) /.test(l)).join('\n');
    const before = await save();
    const r = await check();
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const results = JSON.parse(r.stdout) as Array<{ name: string; level: string; detail: string; hint?: string }>;
    const by = (name: string) => results.find((c) => c.name === name)!;
    assert.equal(by('kube-proxy').level, 'warn');
    assert.match(by('kube-proxy').hint ?? '', /--capture-backend nftables/);
    assert.match(by('CNI').detail, /^bridge \(/);
    assert.equal(by('privilege').level, 'ok');
    // The kernel features were tried for real, and the scratch chains and set are gone.
    assert.equal(by('kernel').level, 'ok', by('kernel').detail);
    assert.equal(await save(), before);
  });

  it('fails, exit 1, without CAP_NET_ADMIN', async () => {
    const r = await check(['--bounding-set', '-net_admin', '--']);
    assert.equal(r.code, 1, r.stderr + r.stdout);
    const results = JSON.parse(r.stdout) as Array<{ name: string; level: string }>;
    assert.equal(results.find((c) => c.name === 'privilege')?.level, 'fail');
  });
});
