// Which iptables meshlet writes into: the one the kubelet's hint chain is in, else the one holding
// more of the node's rules, as kube-proxy's iptables wrapper decides.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { chooseIptablesMode, iptablesTool, parseReport } from '../../src/capture/iptables-mode.ts';

const report = (legacy: [boolean, number, boolean], nft: [boolean, number, boolean]) => ({
  legacy: { available: legacy[0], rules: legacy[1], hint: legacy[2], kubeProxy: false },
  nft: { available: nft[0], rules: nft[1], hint: nft[2], kubeProxy: false },
});

describe('iptables mode', () => {
  it('follows the kubelet\'s hint chain first, whatever the rule counts', () => {
    assert.equal(chooseIptablesMode(report([true, 500, true], [true, 3, false])).mode, 'legacy');
    assert.equal(chooseIptablesMode(report([true, 500, false], [true, 3, true])).mode, 'nft');
  });

  it('then the backend with more of the node\'s rules; nft when there is nothing to follow', () => {
    assert.deepEqual(chooseIptablesMode(report([true, 40, false], [true, 2, false])), { mode: 'legacy', reason: 'the host\'s rules are there (40 rules in legacy, 2 in nft)' });
    assert.equal(chooseIptablesMode(report([true, 0, false], [true, 12, false])).mode, 'nft');
    assert.match(chooseIptablesMode(report([true, 0, false], [true, 0, false])).reason, /nothing to follow/);
    assert.equal(chooseIptablesMode(report([true, 0, false], [true, 0, false])).mode, 'nft');
  });

  it('takes the only backend that runs, and leaves it to the system when neither does', () => {
    assert.equal(chooseIptablesMode(report([false, 0, false], [true, 0, false])).mode, 'nft');
    assert.equal(chooseIptablesMode(report([true, 0, false], [false, 0, false])).mode, 'legacy');
    assert.equal(chooseIptablesMode(report([false, 0, false], [false, 0, false])).mode, 'auto');
  });

  it('reads the node\'s report and names the tools of the mode', () => {
    assert.deepEqual(parseReport('legacy 1 37 1 0\nnft 1 4 0 0\n'), report([true, 37, true], [true, 4, false]));
    assert.equal(parseReport('legacy 1 37 0 1\nnft 1 4 0 0\n').legacy.kubeProxy, true, 'kube-proxy\'s KUBE-SERVICES chain seen in legacy');
    assert.deepEqual(parseReport('legacy 0 0 0\n'), report([false, 0, false], [false, 0, false]));
    assert.equal(iptablesTool({ iptablesMode: 'legacy' }, 4, 'save'), 'iptables-legacy-save');
    assert.equal(iptablesTool({ iptablesMode: 'nft' }, 6, 'restore'), 'ip6tables-nft-restore');
    assert.equal(iptablesTool({ iptablesMode: 'auto' }, 4, 'restore'), 'iptables-restore');
  });
});
