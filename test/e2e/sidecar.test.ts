// Sidecar mode end to end: the same agent code run once per pod, inside the pod's namespace, with
// capture installed there by `meshlet init --sidecar` (the pattern meshlet replaces, kept so the cost
// harness can measure the pattern apart from the proxy). Two nodes with one meshed pod each, and
// nothing of meshlet's in the nodes' namespaces. Everything is removed in after().
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { CLI, MeshLab } from '../../src/demo/lab.ts';
import { tlsRecordTypes } from '../../src/netns/pcap.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;
const MB = 1024 * 1024;
const TD = 'sidecar.test';
const id = (ns: string, sa: string) => `spiffe://${TD}/ns/${ns}/sa/${sa}`;

describe('sidecar mode in network namespaces', { concurrency: false }, () => {
  let lab: MeshLab;

  before(async () => {
    lab = await MeshLab.create({
      trustDomain: TD,
      nodes: [
        { name: 'node-a', pods: [{ name: 'web', namespace: 'shop', serviceAccount: 'web' }] },
        { name: 'node-b', pods: [
          { name: 'pay', namespace: 'bank', serviceAccount: 'payments' },
          { name: 'plain', namespace: 'legacy', captured: false },
        ] },
      ],
    });
    for (const p of ['web', 'pay']) await lab.startSidecar(p);
    await Promise.all(['web', 'pay'].map((p) => lab.waitReady(lab.pod(p))));
    for (const p of ['pay', 'plain']) await lab.startServer(p, PORT);
  });

  after(async () => { await lab?.destroy(); });

  it('gives each sidecar its own pod\'s certificate only, and installs nothing in the nodes', async () => {
    const dump = await lab.configDump(lab.pod('web'));
    assert.deepEqual(dump.mode, { sidecar: 'shop/web' });
    assert.deepEqual(dump.certificates.map((c: { spiffeId: string }) => c.spiffeId), [id('shop', 'web')]);
    assert.deepEqual(dump.workloads.filter((w: { local: boolean }) => w.local).map((w: { name: string }) => w.name), ['web']);
    for (const node of lab.meshNodes) {
      const nat = await lab.topo.exec(node.ns, 'iptables-save', ['-t', 'nat']);
      assert.doesNotMatch(nat.stdout, /MESHLET/, `${node.name}'s nat table`);
    }
    const pod = await lab.topo.exec(lab.pod('web').ns, 'iptables-save', ['-t', 'nat']);
    assert.match(pod.stdout, /-A OUTPUT -j MESHLET_POD_OUTBOUND/);
    assert.match(pod.stdout, /-A PREROUTING -j MESHLET_POD_INBOUND/);
    // Like Istio's proxies, the sidecar runs without CAP_NET_ADMIN (only the init step has it).
    assert.ok((await lab.processLog(lab.sidecars.get('web')!)).some((l) => /sidecar without CAP_NET_ADMIN/.test(l.msg)));
  });

  it('carries 4 MB each way through both sidecars over mTLS, byte for byte, and only TLS crosses the nodes', async () => {
    const marker = 'sidecar-plaintext-marker-41c9 ';
    const { result: r, segments } = await lab.capturing(lab.node('node-a'), () =>
      lab.client('web', { host: lab.pod('pay').ip, port: PORT, bytes: 4 * MB, pattern: marker, timeoutMs: 60_000 }));
    assert.ok(r.ok, JSON.stringify(r.results));
    assert.equal(r.results[0]!.received, 4 * MB);
    assert.equal(r.results[0]!.receivedSha, r.results[0]!.sentSha);

    // The source sidecar tunnelled with the pod's identity; the destination sidecar verified it.
    const out = await eventually('outbound line in web\'s sidecar', async () =>
      (await lab.processLog(lab.sidecars.get('web')!)).find((l) => l.scope === 'access' && l.route === 'tunnel' && l.bytes_sent >= 4 * MB));
    assert.equal(out.src.principal, id('shop', 'web'));
    assert.equal(out.dst.principal, id('bank', 'payments'));
    assert.equal(out.outcome, 'ok');
    const inbound = await eventually('inbound line in pay\'s sidecar', async () =>
      (await lab.processLog(lab.sidecars.get('pay')!)).find((l) => l.scope === 'access' && l.direction === 'inbound' && l.bytes_sent >= 4 * MB));
    assert.equal(inbound.src.principal, id('shop', 'web'));
    assert.equal(inbound.dst.workload, 'bank/pay');

    const tunnel = segments.filter((s) => (s.dstPort === 15008 || s.srcPort === 15008) && s.payload.length > 0);
    assert.ok(tunnel.reduce((n, s) => n + s.payload.length, 0) > 4 * MB, 'the echo crossed on the tunnel port');
    assert.equal(segments.filter((s) => s.payload.includes(marker)).length, 0, 'plaintext payload seen between the nodes');
    assert.equal(segments.filter((s) => s.dstPort === PORT || s.srcPort === PORT).length, 0, 'app port seen between the nodes');
    assert.ok(tlsRecordTypes(tunnel).has(0x17), 'TLS application data records');
  });

  it('passes a connection to a pod outside the mesh through as plain TCP', async () => {
    const r = await lab.client('web', { host: lab.pod('plain').ip, port: PORT, bytes: 64 * 1024 });
    assert.ok(r.ok, JSON.stringify(r.results));
    const line = await eventually('passthrough line', async () =>
      (await lab.processLog(lab.sidecars.get('web')!)).find((l) => l.scope === 'access' && l.route === 'passthrough'));
    assert.equal(line.dst.addr, `${lab.pod('plain').ip}:${PORT}`);
  });

  it('sends plaintext from outside the mesh to the pod through its sidecar\'s inbound port', async () => {
    const r = await lab.client('plain', { host: lab.pod('pay').ip, port: PORT, bytes: 64 * 1024 });
    assert.ok(r.ok, JSON.stringify(r.results));
    const line = await eventually('inbound plaintext line', async () =>
      (await lab.processLog(lab.sidecars.get('pay')!)).find((l) => l.scope === 'access' && l.direction === 'inbound_plaintext' && l.bytes_sent >= 64 * 1024));
    assert.equal(line.dst.workload, 'bank/pay');
    assert.equal(line.connection_security_policy, 'none');
  });

  it('removes the pod\'s capture with `meshlet init --sidecar --cleanup`: no chain or redirect of meshlet\'s is left, the app is reached directly', async () => {
    const ns = lab.pod('pay').ns;
    const sidecar = lab.sidecars.get('pay')!;
    sidecar.child.kill('SIGTERM');
    await sidecar.exited;
    const removed = await lab.topo.exec(ns, process.execPath, [CLI, 'init', '--sidecar', '--cleanup']);
    assert.equal(removed.code, 0, removed.stderr);
    const nat = await lab.topo.exec(ns, 'iptables-save', ['-t', 'nat']);
    assert.doesNotMatch(nat.stdout, /MESHLET|REDIRECT/);
    // Without capture the app is reached directly again.
    const r = await lab.client('plain', { host: lab.pod('pay').ip, port: PORT, bytes: 1024 });
    assert.ok(r.ok, JSON.stringify(r.results));
  });
});
