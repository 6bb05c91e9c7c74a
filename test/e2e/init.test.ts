// `meshlet init` against a real kernel, in a node namespace of its own that already has rules and
// sets of its own: install is idempotent, --dry-run changes nothing and prints input iptables-restore
// accepts, --cleanup leaves the tables exactly as they were, and an unprivileged run fails clearly.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { bridgeTableScript } from '../../src/capture/bridge-ports.ts';
import { runCommand } from '../../src/capture/exec.ts';
import { CLI } from '../../src/demo/lab.ts';
import { Topology } from '../../src/netns/topology.ts';

const WITHOUT_NET_ADMIN = ['--bounding-set', '-net_admin', '--'];

/** iptables-save without the parts that change on their own (comments with dates, counters). */
function normalize(save: string): string {
  return save.split('\n').filter((l) => !l.startsWith('#')).map((l) => l.replace(/\[\d+:\d+\]/g, '[0:0]')).join('\n');
}

describe('meshlet init on a node', { concurrency: false }, () => {
  let topo: Topology;
  let ns: string;
  const sh = async (cmd: string, args: string[], input?: string) => {
    const r = await topo.exec(ns, cmd, args, input);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const meshlet = (args: string[]) => topo.exec(ns, process.execPath, [CLI, ...args]);
  // Both families: the IPv6 guard lives in ip6tables.
  const save = async () => `${normalize(await sh('iptables-save', []))}\n-- ip6tables --\n${normalize(await sh('ip6tables-save', []))}`;
  const sets = async () => (await sh('ipset', ['list', '-n'])).split('\n').filter(Boolean).sort();
  const rules = () => sh('ip', ['-4', 'rule', 'show']);
  let pristine: string;
  let pristineSets: string[];
  let pristineRules: string;

  before(async () => {
    topo = await Topology.create();
    ns = (await topo.addNode('init')).ns;
    // What the node already had: meshlet must neither disturb nor remove any of it.
    await sh('ipset', ['create', 'user-set', 'hash:ip']);
    await sh('iptables-restore', ['--noflush'], [
      '*nat',
      ':USER_CHAIN - [0:0]',
      '-A PREROUTING -p tcp -m tcp --dport 9999 -j REDIRECT --to-ports 9998',
      '-A PREROUTING -j USER_CHAIN',
      '-A USER_CHAIN -s 192.0.2.0/24 -j RETURN',
      'COMMIT',
      '*filter',
      '-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT',
      '-A OUTPUT -p tcp -m tcp --dport 9 -j ACCEPT',
      'COMMIT',
      '*mangle',
      '-A PREROUTING -p udp -m udp --dport 4789 -j MARK --set-xmark 0x4000/0x4000',
      'COMMIT',
      // As NodeLocal DNSCache's: meshlet's anti-spoofing chain shares the raw table.
      '*raw',
      '-A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -j CT --notrack',
      'COMMIT',
      '',
    ].join('\n'));
    await sh('ip6tables-restore', ['--noflush'], '*filter\n-A FORWARD -p tcp -m tcp --dport 443 -j ACCEPT\nCOMMIT\n');
    await sh('ip', ['-4', 'rule', 'add', 'fwmark', '0x4000/0x4000', 'lookup', '200', 'pref', '100']);
    pristine = await save();
    pristineSets = await sets();
    pristineRules = await rules();
  });

  after(async () => { await topo?.destroy(); });

  it('prints the exact iptables-restore input with --dry-run and changes nothing', async () => {
    const r = await meshlet(['init', '--dry-run']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^\*raw\n:MESHLET_ANTISPOOF - \[0:0\]\n.*-m rpfilter --invert .*-j DROP\n-I PREROUTING 1 -j MESHLET_ANTISPOOF\nCOMMIT\n/);
    assert.match(r.stdout, /^\*nat\n:MESHLET_PREROUTING - \[0:0\]\n/m);
    assert.match(r.stdout, /^-I PREROUTING 1 -j MESHLET_PREROUTING$/m);
    assert.match(r.stdout, /--to-ports 15001/);
    assert.match(r.stdout, /^\*filter\n:MESHLET_OUTPUT - \[0:0\]\n/m);
    assert.match(r.stdout, /^-I OUTPUT 1 -j MESHLET_OUTPUT$/m);
    assert.match(r.stdout, /COMMIT\n$/);
    assert.match(r.stderr, /ipset create meshlet-captured hash:ip/);
    assert.match(r.stderr, /ipset create meshlet-destinations hash:ip/);
    assert.match(r.stderr, /ipset create meshlet-pod-ranges hash:net/);
    assert.match(r.stderr, /ipset create meshlet-vouched hash:ip family inet timeout/);
    assert.match(r.stderr, /ipset create meshlet-captured6 hash:ip family inet6/);
    // Then the IPv6 guard's ip6tables-restore input, after its comment line, which names the tool of
    // the iptables mode read off the node (nft here: the node's rules were written by iptables-nft).
    assert.match(r.stderr, /^meshlet init: iptables mode nft \(the host's rules are there/m);
    const [v4, v6] = r.stdout.split('# ip6tables-nft-restore --noflush\n');
    assert.match(v6 ?? '', /^\*filter\n:MESHLET_IPV6 - \[0:0\]\n/);
    assert.match(v6 ?? '', /^-I FORWARD 1 -j MESHLET_IPV6$/m);
    assert.equal(await save(), pristine);
    assert.deepEqual(await sets(), pristineSets);
    // iptables-restore and ip6tables-restore accept their parts as they are (--test parses and
    // checks without committing) once the sets they reference exist.
    const made = [['meshlet-captured', 'hash:ip'], ['meshlet-destinations', 'hash:ip'], ['meshlet-pod-ranges', 'hash:net'], ['meshlet-strict', 'hash:ip'], ['meshlet-vouched', 'hash:ip', 'timeout', '5'], ['meshlet-captured6', 'hash:ip', 'family', 'inet6']];
    for (const args of made) await sh('ipset', ['create', ...args, '-exist']);
    await sh('iptables-restore', ['--test', '--noflush'], v4);
    await sh('ip6tables-restore', ['--test', '--noflush'], v6);
    for (const [name] of made) await sh('ipset', ['destroy', name as string]);
    assert.equal(await save(), pristine);
    assert.deepEqual(await sets(), pristineSets);
  });

  it('installs the chains, the jumps and the sets, and a second run changes nothing', async () => {
    const first = await meshlet(['init']);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /capture installed/);
    const installed = await save();
    assert.notEqual(installed, pristine);
    assert.match(installed, /^:MESHLET_PREROUTING /m);
    assert.equal(installed.match(/-A PREROUTING -j MESHLET_PREROUTING/g)?.length, 1);
    assert.match(installed, /^:MESHLET_OUTPUT /m);
    // The gate comes first in OUTPUT, before the user's own rules could accept a packet.
    assert.equal(installed.split('\n').find((l) => l.startsWith('-A OUTPUT ')), '-A OUTPUT -j MESHLET_OUTPUT');
    assert.deepEqual(await sets(), [...pristineSets, 'meshlet-captured', 'meshlet-captured6', 'meshlet-destinations', 'meshlet-pod-ranges', 'meshlet-strict', 'meshlet-vouched'].sort());
    // The IPv6 guard comes first in FORWARD, before the user's ACCEPT.
    const ip6 = installed.slice(installed.indexOf('-- ip6tables --'));
    assert.deepEqual(ip6.split('\n').filter((l) => l.startsWith('-A FORWARD ')), ['-A FORWARD -j MESHLET_IPV6', '-A FORWARD -p tcp -m tcp --dport 443 -j ACCEPT']);
    assert.match(ip6, /^-A MESHLET_IPV6 -p tcp -m set --match-set meshlet-captured6 dst .*-j REJECT --reject-with tcp-reset$/m);
    // The user's own rules are still there, in their order.
    assert.match(installed, /-A PREROUTING -p tcp -m tcp --dport 9999 -j REDIRECT --to-ports 9998\n-A PREROUTING -j USER_CHAIN\n/);
    // Anti-spoofing: the raw jump first, before the user's NOTRACK.
    const raw = installed.slice(installed.indexOf('*raw')).split('COMMIT')[0] as string;
    assert.deepEqual(raw.split('\n').filter((l) => l.startsWith('-A PREROUTING ')),
      ['-A PREROUTING -j MESHLET_ANTISPOOF', '-A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -j CT --notrack']);
    // Source preservation: the mangle jump first, the policy rule and its local route.
    const mangle = installed.slice(installed.indexOf('*mangle'));
    assert.equal(mangle.split('\n').find((l) => l.startsWith('-A PREROUTING ')), '-A PREROUTING -j MESHLET_SOURCE');
    assert.match(mangle, /-A PREROUTING -p udp -m udp --dport 4789 -j MARK --set-xmark 0x4000\/0x4000/);
    assert.match(await rules(), /^32000:\s+from all fwmark 0x539\/0xfff lookup 133\s*$/m);
    assert.match(await sh('ip', ['-4', 'route', 'show', 'table', '133']), /^local default dev lo/m);
    const installedRules = await rules();

    const second = await meshlet(['init']);
    assert.equal(second.code, 0, second.stderr);
    assert.match(second.stderr, /capture unchanged/);
    assert.equal(await save(), installed);
    assert.equal(await rules(), installedRules, 'no second policy rule');
  });

  it('repairs a chain someone emptied and a policy rule someone deleted', async () => {
    const installed = await save();
    await sh('iptables', ['-t', 'nat', '-F', 'MESHLET_PREROUTING']);
    await sh('ip6tables', ['-F', 'MESHLET_IPV6']);
    assert.notEqual(await save(), installed);
    const installedRules = await rules();
    await sh('ip', ['-4', 'rule', 'del', 'fwmark', '0x539/0xfff', 'lookup', '133']);
    const r = await meshlet(['init']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await save(), installed);
    assert.equal(await rules(), installedRules, 'the policy rule is back');
  });

  it('removes everything it created and nothing else with --cleanup, and a second cleanup is a no-op', async () => {
    await sh('ipset', ['add', 'meshlet-captured', '10.241.9.9']);
    // The bridge table an agent makes on a bridge CNI (capture/bridge-ports.ts) goes too.
    await sh('nft', ['-f', '-'], bridgeTableScript({ bound: new Map([['10.241.9.9', 'p1']]), contested: new Map() }));
    const r = await meshlet(['init', '--cleanup']);
    assert.equal(r.code, 0, r.stderr);
    assert.notEqual((await topo.exec(ns, 'nft', ['list', 'table', 'bridge', 'meshlet'])).code, 0, 'the bridge table is still there');
    assert.equal(await save(), pristine);
    assert.deepEqual(await sets(), pristineSets);
    assert.equal(await rules(), pristineRules, 'the policy rule is gone, the user\'s stays');
    const table = await topo.exec(ns, 'ip', ['-4', 'route', 'show', 'table', '133']);
    assert.equal(table.stdout.trim(), '', 'table 133 is empty again');
    const again = await meshlet(['init', '--cleanup']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /nothing to remove/);
    const dry = await meshlet(['init', '--cleanup', '--dry-run']);
    assert.equal(dry.code, 0, dry.stderr);
    assert.equal(dry.stdout, '');
    assert.match(dry.stderr, /--dry-run: nothing of meshlet's is installed; nothing to remove/, 'a dry run that would do nothing says so');
    assert.equal(await save(), pristine);
  });

  it('refuses clearly without CAP_NET_ADMIN and changes nothing', async () => {
    // The same command without CAP_NET_ADMIN (setpriv drops it from the bounding set; still uid 0,
    // so nothing depends on who may read the checkout).
    const r = await topo.exec(ns, 'setpriv', [...WITHOUT_NET_ADMIN, process.execPath, CLI, 'init']);
    assert.equal(r.code, 3, `exit ${r.code}: ${r.stderr}`);
    assert.match(r.stderr, /CAP_NET_ADMIN/);
    assert.equal(await save(), pristine);
    assert.deepEqual(await sets(), pristineSets);
  });

  it('with --capture-backend nftables: tables of its own (ip, and ip6 for the IPv6 guard), installed once, removed on cleanup with nothing else', async () => {
    const nftArgs = ['--capture-backend', 'nftables'];
    const dry = await meshlet(['init', '--dry-run', ...nftArgs]);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /^add table ip meshlet\n/);
    assert.match(dry.stdout, /priority dstnat - 10;/);
    await sh('nft', ['-f', '-'], 'table ip user-table {\n  chain c { type filter hook input priority 0; policy accept; }\n}\n');
    const first = await meshlet(['init', ...nftArgs]);
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stderr, /capture installed/);
    const list = async () => `${await sh('nft', ['list', 'table', 'ip', 'meshlet'])}${await sh('nft', ['list', 'table', 'ip6', 'meshlet'])}`;
    const listed = await list();
    assert.match(listed, /hook forward .*\n.*ip6 daddr @meshlet-captured6 ct state new reject with tcp reset/);
    const second = await meshlet(['init', ...nftArgs]);
    assert.match(second.stderr, /capture unchanged/);
    assert.equal(await list(), listed);
    const cleanup = await meshlet(['init', '--cleanup', ...nftArgs]);
    assert.equal(cleanup.code, 0, cleanup.stderr);
    const tables = await sh('nft', ['list', 'tables']);
    assert.doesNotMatch(tables, /ip6? meshlet/);
    assert.match(tables, /ip user-table/);
    await sh('nft', ['delete', 'table', 'ip', 'user-table']);
  });

  it('rejects bad flags with a usage error', async () => {
    const r = await meshlet(['init', '--outbound-port', '99999']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /outbound-port/);
  });
});

describe('unprivileged agent and demo', () => {
  it('the agent says it needs CAP_NET_ADMIN and exits 3', async () => {
    const r = await runCommand('setpriv', [...WITHOUT_NET_ADMIN, process.execPath, CLI, 'agent',
      '--node', 'n', '--workloads', '/nonexistent/w.yaml', '--ca-dir', '/nonexistent']);
    assert.equal(r.code, 3, `exit ${r.code}: ${r.stderr}`);
    assert.match(r.stderr, /CAP_NET_ADMIN/);
  });

  it('the demo says it needs root and exits 3', async () => {
    const r = await runCommand('setpriv', [...WITHOUT_NET_ADMIN, process.execPath, CLI, 'demo']);
    assert.equal(r.code, 3, `exit ${r.code}: ${r.stderr}`);
    assert.match(r.stderr, /root/);
  });
});
