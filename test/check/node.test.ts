// `meshlet check --pre`: how a node's facts are judged, each failure with what to do about it.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { evaluateNode, formatChecks, type NodeFacts } from '../../src/check/node.ts';

const good: NodeFacts = {
  netAdmin: true,
  tools: { iptables: true, ipset: true, nft: true, ip: true },
  iptables: { legacy: { available: true, rules: 0, hint: false, kubeProxy: false }, nft: { available: true, rules: 12, hint: true, kubeProxy: true } },
  migrateReq: { value: '1', writable: true },
  ipv6: true,
  kubeProxy: 'iptables',
  bridges: [],
};
const level = (facts: Partial<NodeFacts>, name: string) => evaluateNode({ ...good, ...facts }).find((c) => c.name === name);

describe('meshlet check --pre', () => {
  it('passes a node that has what meshlet needs', () => {
    const results = evaluateNode(good);
    assert.deepEqual(results.filter((c) => c.level !== 'ok'), []);
    assert.match(results.find((c) => c.name === 'iptables mode')!.detail, /^nft: the kubelet's hint chain/);
  });

  it('fails a kernel without what capture uses, naming the modules', () => {
    const kernel = { 'socket match': true, 'rpfilter match': false, REDIRECT: true, 'ipset hash:ip': false, 'ipset hash:net': true };
    const c = level({ kernel }, 'kernel')!;
    assert.equal(c.level, 'fail');
    assert.equal(c.detail, 'cannot use: rpfilter match, ipset hash:ip');
    assert.match(c.hint!, /xt_rpfilter, ip_set_hash_ip/);
    assert.equal(level({ kernel: { ...kernel, 'rpfilter match': true, 'ipset hash:ip': true } }, 'kernel')!.level, 'ok');
    assert.equal(level({}, 'kernel'), undefined, 'not tried (no privilege or no iptables): no line');
  });

  it('fails what would stop init or the agent, saying what to do', () => {
    for (const [facts, name, hint] of [
      [{ netAdmin: false }, 'privilege', /NET_ADMIN/],
      [{ tools: { ...good.tools, ipset: false } }, 'tools', /apt-get install/],
      [{ iptables: { legacy: { available: false, rules: 0, hint: false, kubeProxy: false }, nft: { available: false, rules: 0, hint: false, kubeProxy: false } } }, 'iptables mode', /install iptables/],
      [{ kubeProxy: 'nftables', tools: { ...good.tools, nft: false } }, 'kube-proxy', /--capture-backend nftables/],
      [{ bridges: ['cni0'], tools: { ...good.tools, nft: false } }, 'CNI', /nftables/],
    ] as Array<[Partial<NodeFacts>, string, RegExp]>) {
      const c = level(facts, name);
      assert.equal(c?.level, 'fail', `${name}: ${JSON.stringify(c)}`);
      assert.match(c?.hint ?? '', hint);
    }
  });

  it('warns where meshlet works with a caveat: kube-proxy in nftables mode, upgrades that are not lossless', () => {
    assert.equal(level({ kubeProxy: 'nftables' }, 'kube-proxy')?.level, 'warn');
    assert.equal(level({ migrateReq: { value: '0', writable: false } }, 'tcp_migrate_req')?.level, 'warn');
    assert.equal(level({ migrateReq: 'absent' }, 'tcp_migrate_req')?.level, 'warn');
    assert.equal(level({ migrateReq: { value: '0', writable: true } }, 'tcp_migrate_req')?.level, 'ok', 'init turns it on');
    assert.equal(level({ bridges: ['cni0'] }, 'CNI')?.level, 'ok');
    assert.match(level({ iptables: { legacy: { available: true, rules: 300, hint: false, kubeProxy: false }, nft: { available: true, rules: 3, hint: false, kubeProxy: false } } }, 'iptables mode')!.detail, /^legacy:/);
  });

  it('prints a line per check and the hint under it', () => {
    const text = formatChecks(evaluateNode({ ...good, netAdmin: false }));
    assert.match(text, /^fail {2}privilege +no CAP_NET_ADMIN.*\n +-> run as root/m);
    assert.match(text, /^ok {4}IPv6 /m);
  });
});
