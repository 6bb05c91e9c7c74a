import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  nftChains, nftInstallScript, nftIsInstalled, nftMembersScript, nftVouchScript, parseNftSetJson, parseNftTable,
} from '../../src/capture/nftables.ts';
import { defaultCaptureSettings as s } from '../../src/capture/rules.ts';

// What `nft list table ip meshlet` printed on this kind of machine (nft 1.0.6) after the install script.
const listed = `table ip meshlet {
	set meshlet-captured {
		type ipv4_addr
		elements = { 10.241.1.11 }
	}

	set meshlet-vouched {
		type ipv4_addr
		flags timeout
	}

	chain prerouting {
		type nat hook prerouting priority dstnat - 10; policy accept;
		meta l4proto tcp ip saddr @meshlet-captured redirect to :15001 comment "meshlet: captured pod outbound"
		ip daddr @meshlet-captured tcp dport 15008 redirect to :15008 comment "meshlet: tunnel to captured pod"
		meta l4proto tcp ip daddr @meshlet-captured redirect to :15006 comment "meshlet: plaintext to captured pod"
	}

	chain output {
		type filter hook output priority filter - 10; policy accept;
		ip daddr @meshlet-captured ip daddr != @meshlet-vouched ct state new reject with tcp reset comment "meshlet: captured pod the agent does not vouch for"
	}

	chain source {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto tcp socket transparent 1 meta mark set meta mark & 0xfffff539 | 0x00000539 comment "meshlet: replies to source-preserving connections"
	}
}
`;

describe('nftables capture', () => {
  it('hooks prerouting before kube-proxy\'s dstnat chain, and the gate before filter', () => {
    const chains = nftChains(s);
    assert.match(chains.prerouting[0] ?? '', /priority dstnat - 10;/);
    assert.match(chains.output[0] ?? '', /type filter hook output priority filter - 10;/);
    assert.equal(chains.prerouting.length, 4);
  });

  it('installs in one transaction that keeps the sets and refills the chains', () => {
    const lines = nftInstallScript(s).trim().split('\n');
    assert.equal(lines[0], 'add table ip meshlet');
    assert.ok(lines.includes('add set ip meshlet meshlet-vouched { type ipv4_addr; flags timeout; }'));
    assert.ok(lines.includes('flush chain ip meshlet prerouting'));
    assert.ok(lines.indexOf('flush chain ip meshlet prerouting') < lines.findIndex((l) => l.startsWith('add rule ip meshlet prerouting')));
    assert.ok(!lines.some((l) => l.startsWith('flush set')), 'install never empties the captured set');
  });

  it('recognises its table as nft prints it, and nothing else', () => {
    assert.equal(nftIsInstalled(s, listed), true);
    assert.equal(nftIsInstalled(s, listed.replace(':15006', ':15099')), false);
    assert.equal(nftIsInstalled(s, listed.replace('dstnat - 10', 'dstnat')), false, 'the same priority as kube-proxy is not good enough');
    assert.equal(nftIsInstalled(s, ''), false);
    assert.equal(nftIsInstalled(s, listed.replace(/\tchain source \{[^}]*\}\n/, '')), false, 'the source-preservation chain is part of it');
    assert.deepEqual(parseNftTable(`${listed.replace('reset comment', 'reset # handle 7\ncomment')}`).get('output')?.[0], 'type filter hook output priority filter - 10; policy accept;');
  });

  it('adds and deletes set members, and vouches with a timeout in one flush-and-fill', () => {
    const r = nftMembersScript('meshlet-captured', new Set(['10.0.0.1', '10.0.0.2']), new Set(['10.0.0.2', '10.0.0.3']));
    assert.equal(r.script, 'add element ip meshlet meshlet-captured { 10.0.0.3 }\ndelete element ip meshlet meshlet-captured { 10.0.0.1 }\n');
    assert.deepEqual([r.added, r.removed], [1, 1]);
    assert.equal(nftMembersScript('x', new Set(['a']), new Set(['a'])).script, undefined);
    assert.equal(nftVouchScript('meshlet-vouched', ['10.0.0.1', '10.0.0.2'], 4),
      'flush set ip meshlet meshlet-vouched\nadd element ip meshlet meshlet-vouched { 10.0.0.1 timeout 4s, 10.0.0.2 timeout 4s }\n');
  });

  it('reads set members from nft -j, with and without timeouts', () => {
    const plain = '{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "ip", "name": "c", "table": "meshlet", "type": "ipv4_addr", "elem": ["10.1.0.1", "10.1.0.2"]}}]}';
    const timed = '{"nftables": [{"set": {"name": "v", "elem": [{"elem": {"val": "10.1.0.1", "timeout": 4, "expires": 3}}]}}]}';
    assert.deepEqual([...parseNftSetJson(plain)], ['10.1.0.1', '10.1.0.2']);
    assert.deepEqual([...parseNftSetJson(timed)], ['10.1.0.1']);
    assert.deepEqual([...parseNftSetJson('{"nftables": [{"set": {"name": "e"}}]}')], []);
  });
});
