// IPv6 on a dual-stack mesh: the mesh carries IPv4, and the IPv6 guard makes sure a captured pod's
// IPv6 address is no way around it. Two dual-stack nodes, captured and uncaptured pods on each, real
// `meshlet init` and agents; with iptables, then with the nftables backend. Everything is removed in
// after(), also when a test fails.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { defaultCaptureSettings } from '../../src/capture/rules.ts';
import { MeshLab } from '../../src/demo/lab.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;
const TD = 'v6.test';

/** The lab, its agents running and echo servers in the captured `server` and the uncaptured `neighbour`. */
async function dualStackMesh(captureBackend: 'iptables' | 'nftables'): Promise<MeshLab> {
  const lab = await MeshLab.create({
    trustDomain: TD,
    dualStack: true,
    captureBackend,
    nodes: [
      { name: 'node-a', pods: [{ name: 'client', namespace: 'shop' }, { name: 'outsider', namespace: 'legacy', captured: false }] },
      { name: 'node-b', pods: [{ name: 'server', namespace: 'shop' }, { name: 'neighbour', namespace: 'legacy', captured: false }] },
    ],
  });
  try {
    await lab.startMesh();
    for (const p of ['server', 'neighbour']) await lab.startServer(p, PORT);
    return lab;
  } catch (err) {
    await lab.destroy();
    throw err;
  }
}

/** One echo connection from a pod; its result (ok, or the client's error). */
async function echo(lab: MeshLab, from: string, host: string) {
  const r = await lab.client(from, { host, port: PORT, timeoutMs: 10_000 });
  return r.results[0]!;
}

describe('IPv6 on a dual-stack mesh (iptables)', { concurrency: false }, () => {
  let lab: MeshLab;
  const ip6 = (pod: string) => lab.pod(pod).ip6 as string;

  before(async () => { lab = await dualStackMesh('iptables'); });
  after(async () => { await lab?.destroy(); });

  it('puts each node\'s captured pods\' IPv6 addresses in the guard\'s set', async () => {
    assert.deepEqual(await lab.ipsetMembers(lab.node('node-a'), defaultCaptureSettings.ipset6), new Set([ip6('client')]));
    assert.deepEqual(await lab.ipsetMembers(lab.node('node-b'), defaultCaptureSettings.ipset6), new Set([ip6('server')]));
    // The IPv4 set is unchanged by it: the mesh's addresses only.
    assert.deepEqual(await lab.ipsetMembers(lab.node('node-b')), new Set([lab.pod('server').ip]));
    const dump = await lab.configDump(lab.node('node-b'));
    assert.equal(dump.workloads.find((w: any) => w.name === 'server')?.ipv6, ip6('server'));
  });

  it('refuses new IPv6 connections to a captured pod from any pod, on its node or another, at once', async () => {
    for (const from of ['client', 'outsider', 'neighbour']) {
      const r = await echo(lab, from, ip6('server'));
      assert.equal(r.ok, false, `${from} reached the captured pod over IPv6`);
      // A reset (refused), not a timeout: clients that try IPv6 first move on to IPv4 at once.
      assert.match(r.error ?? '', /ECONNREFUSED/, `${from}: ${r.error}`);
      assert.ok(r.ms < 2000, `${from}: refused after ${r.ms} ms`);
    }
  });

  it('still carries the same pods over IPv4, through the mesh with their identities', async () => {
    const r = await echo(lab, 'client', lab.pod('server').ip);
    assert.equal(r.ok, true, r.error);
    const entry = await eventually('the inbound access-log line', async () => (await lab.accessLog('node-b'))
      .find((l) => l.direction === 'inbound' && l.src.ip === lab.pod('client').ip && l.bytes_sent > 0));
    assert.equal(entry.src.principal, `spiffe://${TD}/ns/shop/sa/client`);
  });

  it('leaves IPv6 to pods outside the mesh alone, from captured pods and others', async () => {
    for (const from of ['client', 'outsider']) {
      const r = await echo(lab, from, ip6('neighbour'));
      assert.equal(r.ok, true, `${from}: ${r.error}`);
      assert.equal(r.receivedSha, r.sentSha);
    }
  });

  it('follows the registry: a pod that leaves the mesh is reachable over IPv6 again, and refused once back', async () => {
    const b = lab.node('node-b');
    await lab.writeWorkloads(lab.workloadsDocument((p) => p.name !== 'server'));
    await eventually('the pod out of the guard\'s set', async () => !(await lab.ipsetMembers(b, defaultCaptureSettings.ipset6)).has(ip6('server')));
    const open = await echo(lab, 'outsider', ip6('server'));
    assert.equal(open.ok, true, open.error);
    await lab.writeWorkloads();
    await eventually('the pod back in the guard\'s set', async () => (await lab.ipsetMembers(b, defaultCaptureSettings.ipset6)).has(ip6('server')));
    const closed = await echo(lab, 'outsider', ip6('server'));
    assert.match(closed.error ?? '', /ECONNREFUSED/);
  });
});

describe('IPv6 on a dual-stack mesh (nftables)', { concurrency: false }, () => {
  let lab: MeshLab;

  before(async () => { lab = await dualStackMesh('nftables'); });
  after(async () => { await lab?.destroy(); });

  it('refuses IPv6 to the captured pod and carries IPv4 and uncaptured IPv6 as the iptables backend does', async () => {
    const set = await lab.topo.exec(lab.node('node-b').ns, 'nft', ['list', 'set', 'ip6', 'meshlet', defaultCaptureSettings.ipset6]);
    assert.match(set.stdout, new RegExp(`elements = \\{ ${lab.pod('server').ip6} \\}`));
    const refused = await echo(lab, 'client', lab.pod('server').ip6 as string);
    assert.match(refused.error ?? '', /ECONNREFUSED/);
    assert.equal((await echo(lab, 'client', lab.pod('server').ip)).ok, true);
    assert.equal((await echo(lab, 'client', lab.pod('neighbour').ip6 as string)).ok, true);
  });
});
