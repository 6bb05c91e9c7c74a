import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  NFT_TABLE, NFT_TABLE6, nftChains, nftInstallScript, nftIsInstalled, nftMembersScript, nftSpoofedDrops, nftVouchScript, parseNftSetJson, parseNftTable,
} from '../../src/capture/nftables.ts';
import { defaultCaptureSettings as s } from '../../src/capture/rules.ts';

// What `nft list table ip meshlet` printed on this kind of machine (nft 1.0.6) after the install script.
const listed = `table ip meshlet {
	set meshlet-captured {
		type ipv4_addr
		elements = { 10.241.1.11 }
	}

	set meshlet-destinations {
		type ipv4_addr
		elements = { 10.241.1.11 }
	}

	set meshlet-pod-ranges {
		type ipv4_addr
		flags interval
		elements = { 10.244.1.0/24, 10.244.2.0/24 }
	}

	set meshlet-vouched {
		type ipv4_addr
		flags timeout
	}

	chain antispoof {
		type filter hook prerouting priority raw; policy accept;
		ip saddr @meshlet-captured fib saddr . iif oif missing counter packets 3 bytes 180 drop comment "meshlet: captured pod address from another interface"
	}

	chain prerouting {
		type nat hook prerouting priority dstnat - 10; policy accept;
		meta l4proto tcp ip saddr @meshlet-captured ip daddr @meshlet-destinations redirect to :15001 comment "meshlet: captured pod to the mesh"
		meta l4proto tcp ip saddr @meshlet-captured ip daddr @meshlet-pod-ranges redirect to :15001 comment "meshlet: captured pod to an unknown pod"
		ip daddr @meshlet-captured tcp dport 15008 redirect to :15008 comment "meshlet: tunnel to captured pod"
		meta l4proto tcp ip daddr @meshlet-captured redirect to :15006 comment "meshlet: plaintext to captured pod"
	}

	chain output {
		type filter hook output priority filter - 10; policy accept;
		ip daddr @meshlet-captured ip daddr != @meshlet-vouched ct state new reject with tcp reset comment "meshlet: captured pod the agent does not vouch for"
	}

	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		meta l4proto != { icmp, tcp } ip daddr @meshlet-strict drop comment "meshlet: non-TCP to a STRICT pod"
	}

	chain source {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto tcp socket transparent 1 meta mark set meta mark & 0xfffff539 | 0x00000539 comment "meshlet: replies to source-preserving connections"
	}
}
`;

// And `nft list table ip6 meshlet` (the IPv6 guard), same machine.
const listed6 = `table ip6 meshlet {
	set meshlet-captured6 {
		type ipv6_addr
		elements = { fd00::5 }
	}

	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		ip6 daddr @meshlet-captured6 ct state new reject with tcp reset comment "meshlet: IPv6 to captured pod (the mesh is IPv4)"
	}
}
`;

describe('nftables capture', () => {
  it('hooks prerouting before kube-proxy\'s dstnat chain, and the gate before filter', () => {
    const chains = nftChains(s);
    assert.match(chains.prerouting[0] ?? '', /priority dstnat - 10;/);
    assert.match(chains.output[0] ?? '', /type filter hook output priority filter - 10;/);
    assert.equal(chains.prerouting.length, 5);
  });

  it('installs in one transaction that keeps the sets and refills the chains', () => {
    const lines = nftInstallScript(s, [4]).trim().split('\n');
    assert.equal(lines[0], 'add table ip meshlet');
    assert.ok(!lines.some((l) => l.includes('ip6')), 'no IPv6 table where the kernel has no IPv6');
    assert.ok(lines.includes('add set ip meshlet meshlet-vouched { type ipv4_addr; flags timeout; }'));
    assert.ok(lines.includes('flush chain ip meshlet prerouting'));
    assert.ok(lines.indexOf('flush chain ip meshlet prerouting') < lines.findIndex((l) => l.startsWith('add rule ip meshlet prerouting')));
    assert.ok(!lines.some((l) => l.startsWith('flush set')), 'install never empties the captured set');
  });

  it('adds the IPv6 guard\'s own table, in the same transaction', () => {
    const lines = nftInstallScript(s, [4, 6]).trim().split('\n');
    assert.deepEqual(lines.slice(lines.indexOf('add table ip6 meshlet')), [
      'add table ip6 meshlet',
      'add set ip6 meshlet meshlet-captured6 { type ipv6_addr; }',
      'add chain ip6 meshlet forward { type filter hook forward priority filter - 10; policy accept; }',
      'flush chain ip6 meshlet forward',
      'add rule ip6 meshlet forward ip6 daddr @meshlet-captured6 ct state new reject with tcp reset comment "meshlet: IPv6 to captured pod (the mesh is IPv4)"',
    ]);
  });

  it('recognises its tables as nft prints them, and nothing else', () => {
    const v4 = (ip: string | undefined) => ({ ip, ip6: undefined, families: [4] as const });
    const both = (ip: string | undefined, ip6: string | undefined) => ({ ip, ip6, families: [4, 6] as const });
    assert.equal(nftIsInstalled(s, v4(listed)), true);
    assert.equal(nftIsInstalled(s, v4(listed.replace(':15006', ':15099'))), false);
    assert.equal(nftIsInstalled(s, v4(listed.replace('dstnat - 10', 'dstnat'))), false, 'the same priority as kube-proxy is not good enough');
    assert.equal(nftIsInstalled(s, v4(undefined)), false);
    assert.equal(nftIsInstalled(s, v4(listed.replace(/\tchain source \{[^}]*\}\n/, ''))), false, 'the source-preservation chain is part of it');
    assert.equal(nftIsInstalled(s, both(listed, listed6)), true);
    assert.equal(nftIsInstalled(s, both(listed, undefined)), false, 'with IPv6, the guard\'s table is part of it');
    assert.equal(nftIsInstalled(s, both(listed, listed6.replace('ct state new ', ''))), false);
    assert.deepEqual(parseNftTable(`${listed.replace('reset comment', 'reset # handle 7\ncomment')}`).get('output')?.[0], 'type filter hook output priority filter - 10; policy accept;');
    assert.equal(nftIsInstalled(s, v4(listed.replace(/\tchain antispoof \{[^}]*\}\n/, ''))), false, 'the anti-spoofing chain is part of it');
    assert.equal(nftIsInstalled(s, v4(listed.replace('fib saddr . iif oif missing', 'fib saddr oif missing'))), false, 'loose reverse path is not enough');
  });

  it('reads the anti-spoofing drops from the rule\'s counter, whatever its value', () => {
    assert.equal(nftSpoofedDrops(s, listed), 3);
    assert.equal(nftIsInstalled(s, { ip: listed.replace('packets 3 bytes 180', 'packets 90210 bytes 5412600'), ip6: undefined, families: [4] }), true);
    assert.equal(nftSpoofedDrops(s, listed.replace('packets 3 bytes 180', 'packets 90210 bytes 5412600')), 90210);
    assert.equal(nftSpoofedDrops(s, undefined), undefined);
  });

  it('adds and deletes set members, and vouches with a timeout in one flush-and-fill', () => {
    const r = nftMembersScript(NFT_TABLE, 'meshlet-captured', new Set(['10.0.0.1', '10.0.0.2']), new Set(['10.0.0.2', '10.0.0.3']));
    assert.equal(r.script, 'add element ip meshlet meshlet-captured { 10.0.0.3 }\ndelete element ip meshlet meshlet-captured { 10.0.0.1 }\n');
    assert.deepEqual([r.added, r.removed], [1, 1]);
    assert.equal(nftMembersScript(NFT_TABLE, 'x', new Set(['a']), new Set(['a'])).script, undefined);
    assert.equal(nftMembersScript(NFT_TABLE6, 'meshlet-captured6', new Set(), new Set(['fd00::5'])).script, 'add element ip6 meshlet meshlet-captured6 { fd00::5 }\n');
    assert.equal(nftVouchScript('meshlet-vouched', ['10.0.0.1', '10.0.0.2'], 4),
      'flush set ip meshlet meshlet-vouched\nadd element ip meshlet meshlet-vouched { 10.0.0.1 timeout 4s, 10.0.0.2 timeout 4s }\n');
  });

  it('reads set members from nft -j, with and without timeouts, and an interval set\'s prefixes', () => {
    const plain = '{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "ip", "name": "c", "table": "meshlet", "type": "ipv4_addr", "elem": ["10.1.0.1", "10.1.0.2"]}}]}';
    const timed = '{"nftables": [{"set": {"name": "v", "elem": [{"elem": {"val": "10.1.0.1", "timeout": 4, "expires": 3}}]}}]}';
    assert.deepEqual([...parseNftSetJson(plain)], ['10.1.0.1', '10.1.0.2']);
    assert.deepEqual([...parseNftSetJson(timed)], ['10.1.0.1']);
    assert.deepEqual([...parseNftSetJson('{"nftables": [{"set": {"name": "e"}}]}')], []);
    // What nft 1.0.6 printed here for the pod ranges set after adding two /24s.
    const ranges = '{"nftables": [{"set": {"family": "ip", "name": "meshlet-pod-ranges", "table": "meshlet", "type": "ipv4_addr", "handle": 4, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.244.1.0", "len": 24}}, {"prefix": {"addr": "10.244.2.0", "len": 24}}]}}]}';
    assert.deepEqual([...parseNftSetJson(ranges)], ['10.244.1.0/24', '10.244.2.0/24']);
  });
});
