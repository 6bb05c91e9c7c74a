// Binding captured addresses to bridge ports: pairing the node's ports with what their peers hold
// (real `ip -j` output shapes), who gets an address when ports contest it, and the table written.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { PeerAddress } from '../../src/capture/socket.ts';
import { bindAddresses, BridgeGuard, bridgeTableScript, pairPorts, parseCounter, type RunTool } from '../../src/capture/bridge-ports.ts';

// `ip -j link show` on a node with a bridge (cni0) and two pods' veths (their namespaces numbered 0
// and 1 here), plus the uplink: only bridge ports with a peer in another namespace count.
const LINKS = JSON.stringify([
  { ifindex: 1, ifname: 'lo' },
  { ifindex: 2, ifname: 'eth0', link_index: 9, link_netnsid: 5 },
  { ifindex: 3, ifname: 'cni0' },
  { ifindex: 4, link_index: 2, ifname: 'veth1', master: 'cni0', link_netnsid: 0 },
  { ifindex: 5, link_index: 2, ifname: 'veth2', master: 'cni0', link_netnsid: 1 },
]);
/** What each pod namespace holds (capture/socket.ts addressesInNetns): lo and its eth0 (index 2). */
const NETNS: Record<number, PeerAddress[]> = {
  0: [{ index: 1, ip: '127.0.0.1' }, { index: 2, ip: '10.0.0.11' }],
  1: [{ index: 2, ip: '10.0.0.12' }],
};
const addressesIn = (nsid: number): PeerAddress[] => {
  const found = NETNS[nsid];
  if (!found) throw new Error(`errno 22 for nsid ${nsid}`);
  return found;
};

describe('bridge ports', () => {
  it('pairs each bridge port with the addresses of its peer interface, and nothing else', () => {
    assert.deepEqual(pairPorts(LINKS, addressesIn), [{ port: 'veth1', ips: ['10.0.0.11'] }, { port: 'veth2', ips: ['10.0.0.12'] }]);
    // A namespace gone while it was read holds nothing.
    assert.deepEqual(pairPorts(LINKS, () => { throw new Error('errno 22'); }), [{ port: 'veth1', ips: [] }, { port: 'veth2', ips: [] }]);
    assert.deepEqual(pairPorts('[]', addressesIn), []);
  });

  it('binds an address held behind one port to it; ignores addresses on no port and pods not captured', () => {
    const b = bindAddresses(new Map(), new Set(['10.0.0.11', '10.0.0.99']), [{ port: 'veth1', ips: ['10.0.0.11'] }, { port: 'veth2', ips: ['10.0.0.12'] }]);
    assert.deepEqual([...b.bound], [['10.0.0.11', 'veth1']]);
    assert.equal(b.contested.size, 0);
  });

  it('keeps a binding when another port claims the address later, and reports the claim', () => {
    const b = bindAddresses(new Map([['10.0.0.11', 'veth1']]), new Set(['10.0.0.11']),
      [{ port: 'veth1', ips: ['10.0.0.11'] }, { port: 'veth2', ips: ['10.0.0.12', '10.0.0.11'] }]);
    assert.deepEqual([...b.bound], [['10.0.0.11', 'veth1']]);
    assert.deepEqual([...b.claimedElsewhere], [['10.0.0.11', ['veth2']]]);
  });

  it('binds an address claimed by two ports when first seen to neither (a pre-claim wins nothing)', () => {
    const b = bindAddresses(new Map(), new Set(['10.0.0.13']), [{ port: 'veth2', ips: ['10.0.0.13'] }, { port: 'veth3', ips: ['10.0.0.13'] }]);
    assert.equal(b.bound.size, 0);
    assert.deepEqual([...b.contested], [['10.0.0.13', ['veth2', 'veth3']]]);
    // The table drops it from every port: claimed, bound to none.
    const script = bridgeTableScript(b);
    assert.match(script, /add element bridge meshlet claimed4 \{ 10\.0\.0\.13 \}/);
    assert.doesNotMatch(script, /add element bridge meshlet bound4/);
  });

  it('moves a binding only when its port no longer holds the address and one other port does', () => {
    const moved = bindAddresses(new Map([['10.0.0.11', 'veth1']]), new Set(['10.0.0.11']), [{ port: 'veth7', ips: ['10.0.0.11'] }]);
    assert.deepEqual([...moved.bound], [['10.0.0.11', 'veth7']]);
    const gone = bindAddresses(new Map([['10.0.0.11', 'veth1']]), new Set(), [{ port: 'veth1', ips: ['10.0.0.11'] }]);
    assert.equal(gone.bound.size, 0, 'a pod no longer captured keeps no binding');
  });

  it('writes the rule and sets in one script, with a named counter that outlives rewrites', () => {
    const script = bridgeTableScript({ bound: new Map([['10.0.0.11', 'veth1']]), contested: new Map() });
    assert.match(script, /add rule bridge meshlet prerouting ether type ip ip saddr @claimed4 ip saddr \. iifname != @bound4 counter name spoofed drop/);
    assert.match(script, /add element bridge meshlet bound4 \{ 10\.0\.0\.11 \. "veth1" \}/);
    assert.match(script, /flush chain bridge meshlet prerouting\n/);
    assert.equal(parseCounter('table bridge meshlet {\n\tcounter spoofed {\n\t\tpackets 7 bytes 420\n\t}\n}'), 7);
  });

  it('the guard writes nothing on a routed node, writes on change only, and reads its counter', async () => {
    const calls: string[] = [];
    let links = JSON.stringify([{ ifindex: 1, ifname: 'lo' }, { ifindex: 4, ifname: 'cali1', link_index: 2, link_netnsid: 0 }]);
    const run: RunTool = async (cmd, args) => {
      calls.push(`${cmd} ${args.join(' ')}`);
      if (args[1] === 'link') return links;
      if (args[0] === 'list') return 'counter spoofed { packets 3 bytes 180 }';
      return '';
    };
    const guard = new BridgeGuard(run, addressesIn);
    await guard.sync(new Set());
    assert.equal(calls.length, 0, 'read the ports with no captured pod and no table');
    const local = new Set(['10.0.0.11']);
    assert.equal((await guard.sync(local)).written, false, 'a node without bridge ports got a table');
    assert.equal(await guard.dropped(), undefined);
    links = LINKS;
    // Asked twice at once (a registry change and the capture check): one after the other, one write.
    const both = await Promise.all([guard.sync(local), guard.sync(local)]);
    assert.deepEqual(both.map((r) => r.written), [true, false], 'rewritten with nothing changed');
    assert.equal(calls.filter((c) => c.startsWith('nft -f')).length, 1);
    assert.equal(await guard.dropped(), 3);
  });
});
