// NetworkPolicy that still holds (issue 24, part 3). A CNI enforces NetworkPolicy at each pod's
// interface; meshlet claims that, because the agent delivers to a pod from its client's own address
// on the application's port, such enforcement sees with the mesh what it sees without it (no rule
// for a tunnel port). Here a stand-in for that enforcement on the lab's routed pod interfaces (the
// node's end of each veth, as routed CNIs wire pods):
//  - ingress to a pod: iptables on packets leaving the node through the pod's interface, forwarded
//    or sent by a process of the node (filter FORWARD and OUTPUT, `-o`): only the client pod's
//    address, to port 5432;
//  - egress from a pod at its interface, before any NAT (mangle PREROUTING, `-i`), where an eBPF
//    CNI's hook on the interface sees it: only the database pods on 5432;
//  - egress enforced after NAT (filter FORWARD and INPUT, `-i`), the place an iptables CNI applies
//    a pod's egress rules to traffic for the node itself: where it breaks, shown as such.
// Same-node and cross-node paths, with the iptables backend and then nftables. Everything is
// removed in after(), also when a test fails.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MeshLab } from '../../src/demo/lab.ts';
import type { PodNs } from '../../src/netns/topology.ts';

const DB_PORT = 5432;
const OTHER_PORT = 8080;

type Table = 'filter' | 'mangle';

async function iptables(lab: MeshLab, pod: PodNs, table: Table, args: string[]): Promise<string> {
  const r = await lab.topo.exec(pod.node.ns, 'iptables', ['-t', table, ...args]);
  if (r.code !== 0) throw new Error(`iptables -t ${table} ${args.join(' ')} on ${pod.node.name}: ${r.stderr}`);
  return r.stdout;
}

/** One pod's rules in one direction: a chain the given hooks jump to for the pod's interface. */
interface StandIn {
  chain: string;
  table: Table;
  /** Packets the chain's final DROP has taken. */
  dropped(): Promise<number>;
  /** Packets a RETURN (allowed) rule has let through, all rules together. */
  allowed(): Promise<number>;
  remove(): Promise<void>;
}

async function standIn(lab: MeshLab, pod: PodNs, opts: { chain: string; table: Table; hooks: string[]; side: '-o' | '-i'; allow: string[][] }): Promise<StandIn> {
  const { chain, table } = opts;
  await iptables(lab, pod, table, ['-N', chain]);
  await iptables(lab, pod, table, ['-A', chain, '-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'RETURN']);
  for (const match of opts.allow) await iptables(lab, pod, table, ['-A', chain, ...match, '-j', 'RETURN']);
  await iptables(lab, pod, table, ['-A', chain, '-j', 'DROP']);
  for (const hook of opts.hooks) await iptables(lab, pod, table, ['-I', hook, '1', opts.side, pod.hostIf, '-j', chain]);
  const counters = async () => {
    const lines = (await iptables(lab, pod, table, ['-L', chain, '-n', '-v', '-x'])).split('\n').slice(2).filter((l) => l.trim());
    // Rule 1 is the established one; the allow rules follow; the DROP is last.
    const packets = lines.map((l) => Number(l.trim().split(/\s+/)[0]));
    return { allowed: packets.slice(1, -1).reduce((a, b) => a + b, 0), dropped: packets.at(-1) ?? 0 };
  };
  return {
    chain, table,
    dropped: async () => (await counters()).dropped,
    allowed: async () => (await counters()).allowed,
    async remove() {
      for (const hook of opts.hooks) await iptables(lab, pod, table, ['-D', hook, opts.side, pod.hostIf, '-j', chain]);
      await iptables(lab, pod, table, ['-F', chain]);
      await iptables(lab, pod, table, ['-X', chain]);
    },
  };
}

/** Ingress: only `from`'s address, to port 5432, on packets leaving through the pod's interface. */
const ingressOnlyFrom = (lab: MeshLab, pod: PodNs, from: PodNs) => standIn(lab, pod, {
  chain: `CNI-TO-${pod.name}`, table: 'filter', hooks: ['FORWARD', 'OUTPUT'], side: '-o',
  allow: [['-s', from.ip, '-p', 'tcp', '--dport', String(DB_PORT)]],
});

/** Egress: only `to` on 5432, checked where the pod's packets come in (before NAT, or after). */
const egressOnlyTo = (lab: MeshLab, pod: PodNs, to: PodNs[], where: 'before-nat' | 'after-nat') => standIn(lab, pod, {
  chain: `CNI-FROM-${pod.name}`, side: '-i',
  ...(where === 'before-nat' ? { table: 'mangle' as const, hooks: ['PREROUTING'] } : { table: 'filter' as const, hooks: ['FORWARD', 'INPUT'] }),
  allow: to.map((t) => ['-d', t.ip, '-p', 'tcp', '--dport', String(DB_PORT)]),
});

for (const backend of ['iptables', 'nftables'] as const) {
  describe(`NetworkPolicy at the pods' interfaces holds with the mesh (${backend})`, { concurrency: false }, () => {
    let lab: MeshLab;
    const installed: StandIn[] = [];
    const install = async (s: Promise<StandIn>) => { const r = await s; installed.push(r); return r; };
    const removeAll = async () => { for (const s of installed.splice(0)) await s.remove(); };

    /** Whether `from` gets an answer from `to`:port, and the address the server saw. */
    const whoami = async (from: string, to: string, port: number, timeoutMs = 3_000) => {
      const r = await lab.client(from, { host: lab.pod(to).ip, port, mode: 'whoami', timeoutMs });
      return { ok: r.ok, seenAs: r.results[0]?.reply, error: r.results[0]?.error };
    };

    before(async () => {
      lab = await MeshLab.create({
        trustDomain: 'netpol.test',
        captureBackend: backend,
        nodes: [
          { name: 'node-a', pods: [{ name: 'client', namespace: 'shop' }, { name: 'intruder', namespace: 'shop' }, { name: 'db-local', namespace: 'shop' }] },
          { name: 'node-b', pods: [{ name: 'db', namespace: 'shop' }, { name: 'plain-b', namespace: 'legacy', captured: false }] },
        ],
      });
      await lab.startMesh();
      for (const p of ['db', 'db-local']) for (const port of [DB_PORT, OTHER_PORT]) await lab.startServer(p, port);
      for (const p of ['intruder', 'plain-b']) await lab.startServer(p, DB_PORT);
    });

    after(async () => {
      try { if (lab) await removeAll(); } finally { await lab?.destroy(); }
    });

    it('without the stand-in, the mesh carries every one of the connections below', async () => {
      const tries = [['client', 'db', DB_PORT], ['client', 'db', OTHER_PORT], ['intruder', 'db', DB_PORT], ['client', 'db-local', DB_PORT],
        ['intruder', 'db-local', DB_PORT], ['client', 'intruder', DB_PORT], ['client', 'plain-b', DB_PORT]] as const;
      for (const [from, to, port] of tries) {
        const r = await whoami(from, to, port, 10_000);
        assert.equal(r.ok, true, `${from} -> ${to}:${port}: ${r.error}`);
        assert.equal(r.seenAs, lab.pod(from).ip, `${from} -> ${to}:${port} seen as another address`);
      }
      const routes = new Set((await lab.accessLog('node-a')).filter((l) => l.outcome === 'ok').map((l) => l.route));
      assert.ok(routes.has('tunnel') && routes.size > 1, `both paths taken: ${[...routes]}`);
    });

    it('ingress at the destination pod\'s interface admits the client on 5432 only, across nodes and on one node', async () => {
      const client = lab.pod('client');
      for (const dbName of ['db', 'db-local']) {
        const rules = await install(ingressOnlyFrom(lab, lab.pod(dbName), client));
        const ok = await whoami('client', dbName, DB_PORT, 10_000);
        assert.equal(ok.ok, true, `client -> ${dbName}:${DB_PORT}: ${ok.error}`);
        assert.equal(ok.seenAs, client.ip);
        // The delivery crossed the interface's rule as the client: the agent's connection to the pod
        // came from the client's address, so the rule that names it let it in. No rule names 15008.
        assert.ok(await rules.allowed() > 0, `${dbName}: the delivery never met the ingress rules`);
        const droppedBefore = await rules.dropped();
        for (const [from, port] of [['intruder', DB_PORT], ['client', OTHER_PORT]] as const) {
          const r = await whoami(from, dbName, port);
          assert.equal(r.ok, false, `${from} -> ${dbName}:${port} answered as ${r.seenAs}: the mesh went around the ingress rules`);
        }
        assert.ok(await rules.dropped() > droppedBefore, `${dbName}: the refusals were not the stand-in's drops`);
      }
      await removeAll();
    });

    it('egress at the client pod\'s interface, before NAT, holds: the databases on 5432 only', async () => {
      const rules = await install(egressOnlyTo(lab, lab.pod('client'), [lab.pod('db'), lab.pod('db-local')], 'before-nat'));
      for (const to of ['db', 'db-local']) {
        const r = await whoami('client', to, DB_PORT, 10_000);
        assert.equal(r.ok, true, `client -> ${to}:${DB_PORT}: ${r.error}`);
        assert.equal(r.seenAs, lab.pod('client').ip);
      }
      const droppedBefore = await rules.dropped();
      const denied = [['db', OTHER_PORT], ['intruder', DB_PORT], ['plain-b', DB_PORT]] as const;
      const logged = (await lab.accessLog('node-a')).length;
      for (const [to, port] of denied) {
        const r = await whoami('client', to, port);
        assert.equal(r.ok, false, `client -> ${to}:${port} answered: the mesh went around the egress rules`);
      }
      assert.ok(await rules.dropped() > droppedBefore, 'the refusals were not the stand-in\'s drops');
      // Lines of the allowed connections above may be written after `logged`: only the denied count.
      const deniedAddrs = new Set(denied.map(([to, port]) => `${lab.pod(to).ip}:${port}`));
      const seen = (await lab.accessLog('node-a')).slice(logged).filter((l) => deniedAddrs.has(l.dst?.addr));
      assert.deepEqual(seen, [], 'the agent saw connections the egress rules drop');
      await removeAll();
    });

    it('where it breaks: egress rules applied after NAT see the agent\'s port, not the destination', async () => {
      // The same allow rules for a pod outside the mesh and one in it: the first is forwarded as is
      // and passes; the second was redirected to the agent (nat PREROUTING) before filter INPUT, so
      // the rules see the node's address and port 15001 and drop it.
      const rules = await install(egressOnlyTo(lab, lab.pod('client'), [lab.pod('plain-b'), lab.pod('db')], 'after-nat'));
      const outside = await whoami('client', 'plain-b', DB_PORT, 10_000);
      assert.equal(outside.ok, true, `client -> plain-b:${DB_PORT}: ${outside.error}`);
      const droppedBefore = await rules.dropped();
      const meshed = await whoami('client', 'db', DB_PORT);
      assert.equal(meshed.ok, false, 'egress rules after NAT let a redirected connection through');
      assert.ok(await rules.dropped() > droppedBefore, 'not dropped by the egress rules');
      await removeAll();
      assert.equal((await whoami('client', 'db', DB_PORT, 10_000)).ok, true, 'the mesh path works again without them');
    });
  });
}
