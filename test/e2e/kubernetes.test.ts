// Agents fed by the Kubernetes API end to end: the API stand-in runs in a namespace of its own on the
// underlay, two agents read it with --kubeconfig and their --node, and the test plays the cluster:
// namespaces opt in and out, pods come, change IP and go, watches break and expire. After each
// step the node's captured-pods ipset and the agent's certificates must match the cluster.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { MeshLab, PEER } from '../../src/demo/lab.ts';
import { endpointSliceObject, namespaceObject, nodeObject, podObject, serviceObject, standInKubeConfig } from '../support/apiserver.ts';
import { eventually } from '../support/wait.ts';

const APP_PORT = 8080;
/** Bytes that must never cross the node link in the clear. */
const MARKER = 'away-rule-marker-3c1f';
const API_PORT = 6443;

describe('agents fed by the Kubernetes API in network namespaces', { concurrency: false }, () => {
  let lab: MeshLab;
  let api: ChildProcess | undefined;
  let controller: ChildProcess | undefined;
  let kubeconfig: string;
  const pending = new Map<number, (reply: any) => void>();
  let nextId = 1;

  /** One command to the stand-in process; resolves with its reply. */
  const call = (cmd: object): Promise<any> => new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, (r) => (r.ok ? resolve(r) : reject(new Error(r.error))));
    api!.stdin!.write(JSON.stringify({ id, ...cmd }) + '\n');
  });

  const podOf = (name: string, ip?: string) => {
    const p = lab.pod(name);
    return podObject({ name, namespace: 'shop', node: p.node.name, serviceAccount: name, ip: ip ?? p.ip, hostIP: p.node.ip });
  };
  const id = (sa: string) => `spiffe://${lab.trustDomain}/ns/shop/sa/${sa}`;
  const ipset = (node: string) => lab.ipsetMembers(lab.node(node));
  const certs = async (node: string) => new Set((await lab.configDump(lab.node(node))).certificates
    .filter((c: any) => c.state === 'available').map((c: any) => c.spiffeId as string));
  const ready = async (node: string) => (await lab.topo.exec(lab.node(node).ns, process.execPath, [PEER, 'get', '--url', 'http://127.0.0.1:15021/healthz/ready'])).code === 0;

  /** Polls until the node's ipset and available certificates are exactly these. */
  async function expectNode(node: string, want: { ips: string[]; ids: string[] }, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let seen = '';
    for (;;) {
      const [set, have] = [await ipset(node), await certs(node)];
      seen = JSON.stringify({ ips: [...set].sort(), ids: [...have].sort() });
      if (seen === JSON.stringify({ ips: [...want.ips].sort(), ids: [...want.ids].sort() })) return;
      if (Date.now() > deadline) assert.fail(`${node}: want ${JSON.stringify(want)}, have ${seen}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async function startApi(): Promise<void> {
    const node = lab.apiNode!;
    api = lab.topo.spawn(node.ns, process.execPath, [join(import.meta.dirname, '../support/apiserver-main.ts'), '--host', node.ip, '--port', String(API_PORT)],
      { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines = createInterface({ input: api.stdout! });
    const listening = new Promise<{ listening: string; token: string }>((resolve, reject) => {
      lines.once('line', (l) => resolve(JSON.parse(l)));
      api!.once('exit', (code) => reject(new Error(`API stand-in exited with ${code}`)));
    });
    const hello = await listening;
    lines.on('line', (l) => {
      const r = JSON.parse(l);
      pending.get(r.id)?.(r);
      pending.delete(r.id);
    });
    assert.equal(hello.listening, `http://${node.ip}:${API_PORT}`);
  }

  before(async () => {
    lab = await MeshLab.create({
      apiNode: true,
      nodes: [
        { name: 'node-a', pods: [{ name: 'web' }, { name: 'worker' }] },
        { name: 'node-b', pods: [{ name: 'db' }, { name: 'late' }, { name: 'plain' }] },
      ],
    });
    try {
      kubeconfig = join(lab.dir, 'kubeconfig');
      await writeFile(kubeconfig, standInKubeConfig(`http://${lab.apiNode!.ip}:${API_PORT}`));
      for (const node of lab.meshNodes) await lab.initCapture(node);
      await lab.startServer('db', APP_PORT);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => {
    controller?.kill('SIGKILL');
    api?.stdin?.end();
    await lab?.destroy();
  });

  it('stays not ready while the apiserver is unreachable, then syncs, captures the opted-in pods and lifts the taint gate', async () => {
    for (const node of lab.meshNodes) {
      await lab.startAgent(node, [], { workloads: ['--kubeconfig', kubeconfig] });
    }
    // Up (its admin port answers) but, with no apiserver, not synced and not ready.
    const dump = await eventually('node-a\'s admin port', async () => lab.configDump(lab.node('node-a')).catch(() => undefined), 20_000, 200);
    assert.equal(await ready('node-a'), false, 'not ready before the first sync');
    assert.ok(dump.pending.includes('workloads-synced'), JSON.stringify(dump.pending));
    assert.equal(dump.workloadSource.kind, 'kubernetes');
    assert.equal(dump.workloadSource.synced, false);

    await startApi();
    await call({ op: 'installCrd', resource: 'meshpolicies' });
    await call({ op: 'put', resource: 'namespaces', obj: namespaceObject('shop', 'enabled') });
    await call({ op: 'put', resource: 'namespaces', obj: namespaceObject('kube-system') });
    await call({ op: 'put', resource: 'pods', obj: podOf('web') });
    await call({ op: 'put', resource: 'pods', obj: podOf('db') });
    // The node's own host-network pods (kube-proxy, the agent itself) never enter the mesh.
    await call({ op: 'put', resource: 'pods', obj: podObject({ name: 'kube-proxy-a', namespace: 'kube-system', node: 'node-a', ip: lab.node('node-a').ip, hostNetwork: true }) });
    // Both nodes registered with the taint gate (a node pool's setting), node-a with a taint of its own too.
    const other = { key: 'dedicated', value: 'web', effect: 'NoSchedule' };
    const gate = { key: 'meshlet.dev/agent-not-ready', effect: 'NoSchedule' };
    await call({ op: 'put', resource: 'nodes', obj: { ...nodeObject('node-a'), spec: { taints: [other, gate] } } });
    await call({ op: 'put', resource: 'nodes', obj: { ...nodeObject('node-b'), spec: { taints: [gate] } } });
    await Promise.all(lab.meshNodes.map((n) => lab.waitReady(n, 40_000)));
    // Ready agents lift the gate on their own nodes, and nothing else.
    const taints = async (name: string) => ((await call({ op: 'get', resource: 'nodes', name })).value as { spec: { taints?: object[] } }).spec.taints ?? [];
    await eventually('both nodes untainted', async () => JSON.stringify([await taints('node-a'), await taints('node-b')]) === JSON.stringify([[other], []]), 10_000, 100);
    await expectNode('node-a', { ips: [lab.pod('web').ip], ids: [id('web')] });
    await expectNode('node-b', { ips: [lab.pod('db').ip], ids: [id('db')] });

    // The identities are real: web reaches db across nodes through the tunnel, as itself.
    const r = await lab.client('web', { host: lab.pod('db').ip, port: APP_PORT, bytes: 200_000 });
    assert.ok(r.ok, JSON.stringify(r));
    const deadline = Date.now() + 5000;
    while (!(await lab.accessLog('node-b')).some((l) => l.route === 'inbound' && l.outcome === 'ok' && l.src?.principal === id('web'))) {
      assert.ok(Date.now() < deadline, 'node-b logged no inbound connection from web\'s identity');
      await new Promise((res) => setTimeout(res, 100));
    }
  });

  it('captures a pod added to an opted-in namespace and gives it a certificate; follows its IP, opt-out and deletion', async () => {
    const worker = lab.pod('worker');
    await call({ op: 'put', resource: 'pods', obj: podOf('worker', '') });
    await new Promise((r) => setTimeout(r, 300));
    await expectNode('node-a', { ips: [lab.pod('web').ip], ids: [id('web')] }, 1000);
    await call({ op: 'put', resource: 'pods', obj: podOf('worker') });
    await expectNode('node-a', { ips: [lab.pod('web').ip, worker.ip], ids: [id('web'), id('worker')] });
    // A new IP replaces the old one in the set (the identity, and so the certificate, stays).
    await call({ op: 'put', resource: 'pods', obj: podOf('worker', '10.241.1.99') });
    await expectNode('node-a', { ips: [lab.pod('web').ip, '10.241.1.99'], ids: [id('web'), id('worker')] });
    await call({ op: 'put', resource: 'pods', obj: podOf('worker') });
    await expectNode('node-a', { ips: [lab.pod('web').ip, worker.ip], ids: [id('web'), id('worker')] });
    // The pod opts out with its own annotation: released, certificate dropped.
    const optedOut = podOf('worker');
    (optedOut.metadata as any).annotations['meshlet.dev/capture'] = 'disabled';
    await call({ op: 'put', resource: 'pods', obj: optedOut });
    await expectNode('node-a', { ips: [lab.pod('web').ip], ids: [id('web')] });
    await call({ op: 'put', resource: 'pods', obj: podOf('worker') });
    await expectNode('node-a', { ips: [lab.pod('web').ip, worker.ip], ids: [id('web'), id('worker')] });
    await call({ op: 'remove', resource: 'pods', namespace: 'shop', name: 'worker' });
    await expectNode('node-a', { ips: [lab.pod('web').ip], ids: [id('web')] });
  });

  it('releases every pod of a namespace that is un-annotated, and captures them again when it opts back in', async () => {
    await call({ op: 'put', resource: 'namespaces', obj: namespaceObject('shop') });
    await expectNode('node-a', { ips: [], ids: [] });
    await expectNode('node-b', { ips: [], ids: [] });
    await call({ op: 'put', resource: 'namespaces', obj: namespaceObject('shop', 'enabled') });
    await expectNode('node-a', { ips: [lab.pod('web').ip], ids: [id('web')] });
    await expectNode('node-b', { ips: [lab.pod('db').ip], ids: [id('db')] });
  });

  it('enforces a MeshPolicy from the cluster on new connections, and lifts it when it is deleted', async () => {
    const reach = async () => (await lab.client('web', { host: lab.pod('db').ip, port: APP_PORT, bytes: 1000, timeoutMs: 5000 })).ok;
    assert.equal(await reach(), true);
    await call({ op: 'put', resource: 'meshpolicies', obj: {
      apiVersion: 'meshlet.dev/v1alpha1', kind: 'MeshPolicy', metadata: { name: 'no-web', namespace: 'shop', generation: 1 },
      spec: { action: 'DENY', rules: [{ from: [{ principals: [id('web')] }] }] },
    } });
    const policyIds = async () => (await lab.configDump(lab.node('node-b'))).policy.policies.map((p: any) => p.id);
    await eventually('the policy reaches node-b', async () => (await policyIds()).includes('shop/no-web'));
    assert.equal(await reach(), false, 'denied at node-b by the policy from the API');
    await call({ op: 'remove', resource: 'meshpolicies', namespace: 'shop', name: 'no-web' });
    await eventually('the policy is gone from node-b', async () => (await policyIds()).length === 0);
    assert.equal(await reach(), true);
  });

  it('resolves a Service from the cluster to its EndpointSlice\'s endpoints, and applies endpoint changes promptly', async (t) => {
    const CLUSTER_IP = '10.96.0.20';
    const slice = (ready: boolean) => endpointSliceObject({
      name: 'db-abc12', namespace: 'shop', service: 'db', endpoints: [{ ip: lab.pod('db').ip, node: 'node-b', ready }], ports: [{ name: 'tcp', port: APP_PORT }],
    });
    await call({ op: 'put', resource: 'services', obj: serviceObject({ name: 'db', namespace: 'shop', clusterIP: CLUSTER_IP, ports: [{ name: 'tcp', port: 80, targetPort: APP_PORT }], selector: { app: 'db' } }) });
    await call({ op: 'put', resource: 'endpointslices', obj: slice(true) });
    const endpoints = async () => (await lab.configDump(lab.node('node-a'))).services.find((x: any) => x.name === 'db')?.endpoints ?? [];
    await eventually('node-a knows the Service', async () => (await endpoints()).length === 1);
    const viaService = async () => (await lab.client('web', { host: CLUSTER_IP, port: 80, bytes: 1000, timeoutMs: 5000 })).ok;
    const from = (await lab.accessLog('node-a')).length;
    assert.equal(await viaService(), true);
    const line = (await lab.accessLog('node-a')).slice(from).find((l) => l.dst?.service === 'shop/db');
    assert.equal(line?.route, 'tunnel');
    assert.equal(line?.dst.addr, `${lab.pod('db').ip}:${APP_PORT}`);

    const changed = Date.now();
    await call({ op: 'put', resource: 'endpointslices', obj: slice(false) });
    await eventually('the endpoint not ready on node-a', async () => (await endpoints())[0]?.ready === false, 5_000, 50);
    const tookMs = Date.now() - changed;
    // Each poll spawns a process in the node's namespace; the figure is the test's, not the agent's.
    t.diagnostic(`endpoint change seen in the config dump ${tookMs} ms after it was written`);
    assert.ok(tookMs < 4_000, `took ${tookMs} ms`);
    assert.equal(await viaService(), false, 'no ready endpoint: refused (no_endpoints), not passed to the ClusterIP');
    assert.ok((await lab.accessLog('node-a')).some((l) => l.error === 'no_endpoints' && l.dst?.service === 'shop/db'));
    await call({ op: 'put', resource: 'endpointslices', obj: slice(true) });
    await eventually('ready again', async () => (await endpoints())[0]?.ready === true, 5_000, 50);
    assert.equal(await viaService(), true);
  });

  it('keeps capture in force while watches break or expire, and catches up afterwards', async () => {
    await call({ op: 'down', value: true });
    await call({ op: 'breakWatches' });
    await new Promise((r) => setTimeout(r, 500));
    await expectNode('node-a', { ips: [lab.pod('web').ip], ids: [id('web')] }, 1000);
    assert.equal(await ready('node-a'), true, 'a lost apiserver does not make a synced agent unready');
    // What changed while the agents were away arrives when the apiserver answers again.
    await call({ op: 'put', resource: 'pods', obj: podOf('worker') });
    await call({ op: 'down', value: false });
    await expectNode('node-a', { ips: [lab.pod('web').ip, lab.pod('worker').ip], ids: [id('web'), id('worker')] }, 40_000);
    const podLists = async () => (await lab.agentLog('node-a')).filter((l) => l.msg === 'listed' && l.resource === 'pods').length;
    const listsBefore = await podLists();
    await call({ op: 'expireWatches' });
    await call({ op: 'remove', resource: 'pods', namespace: 'shop', name: 'worker' });
    await expectNode('node-a', { ips: [lab.pod('web').ip], ids: [id('web')] }, 40_000);
    assert.ok(await podLists() > listsBefore, 'the agent re-listed pods after the 410');
  });

  it('with --remote-workloads slices, rolled out one node at a time: agents learn other nodes\' pods from the slices', async () => {
    // The address controller as a CA replica runs it, beside the API; the agents restarted on slices.
    controller = lab.topo.spawn(lab.apiNode!.ns, process.execPath, [join(import.meta.dirname, '../support/address-controller-main.ts'), '--kubeconfig', kubeconfig, '--identity', 'ca-0'],
      { stdio: ['ignore', 'ignore', 'inherit'] });
    const source = async (node: string) => (await lab.configDump(lab.node(node))).workloadSource;
    const webToDb = async () => {
      const before = (await lab.accessLog('node-b')).length;
      const r = await lab.client('web', { host: lab.pod('db').ip, port: APP_PORT, bytes: 100_000 });
      assert.ok(r.ok, JSON.stringify(r));
      await eventually('node-b\'s inbound line for web', async () => (await lab.accessLog('node-b')).slice(before)
        .some((l) => l.route === 'inbound' && l.outcome === 'ok' && l.src?.principal === id('web')), 5_000, 100);
    };
    // A rollout: node-b's agent moves to the slices first, node-a's still watches every Pod.
    await lab.stopAgent('node-b');
    await lab.startAgent(lab.node('node-b'), ['--remote-workloads', 'slices'], { workloads: ['--kubeconfig', kubeconfig] });
    await lab.waitReady(lab.node('node-b'), 40_000);
    assert.equal((await source('node-a')).addressSlices, undefined, 'node-a is still on Pods');
    await webToDb();
    await lab.stopAgent('node-a');
    await lab.startAgent(lab.node('node-a'), ['--remote-workloads', 'slices'], { workloads: ['--kubeconfig', kubeconfig] });
    await lab.waitReady(lab.node('node-a'), 40_000);
    await expectNode('node-a', { ips: [lab.pod('web').ip], ids: [id('web')] });
    await expectNode('node-b', { ips: [lab.pod('db').ip], ids: [id('db')] });
    // node-a caches its own node's Pods only; db (node-b) reaches it through a slice.
    await eventually('node-a holding slices', async () => (await source('node-a')).addressSlices >= 1, 10_000, 100);
    assert.equal((await source('node-a')).pods, 1, 'node-a cached Pods of another node');
    await webToDb();
    // A pod that starts on node-a reaches node-b through the slices, and node-a captures it itself.
    await call({ op: 'put', resource: 'pods', obj: podOf('worker') });
    await eventually('worker in node-b\'s view, from a slice', async () => (await lab.configDump(lab.node('node-b'))).workloads
      .some((w: { ip: string; local: boolean }) => w.ip === lab.pod('worker').ip && !w.local), 10_000, 100);
    await expectNode('node-a', { ips: [lab.pod('web').ip, lab.pod('worker').ip], ids: [id('web'), id('worker')] });
    await call({ op: 'remove', resource: 'pods', namespace: 'shop', name: 'worker' });
  });

  it('while the address controller is away, a pod started on another node is reached through the tunnel, never in plaintext; one outside the mesh as the client pod', async () => {
    // The nodes' pod ranges, as the cluster's IPAM gives them: the agents learn them from the Nodes.
    for (const n of lab.meshNodes) await call({ op: 'put', resource: 'nodes', obj: nodeObject(n.name, [n.podCidr]) });
    await eventually('node-a holding the pod ranges', async () => (await lab.ipsetMembers(lab.node('node-a'), 'meshlet-pod-ranges')).size === 2, 10_000, 100);
    controller!.kill('SIGKILL');
    controller = undefined;
    const [late, plain, web] = [lab.pod('late'), lab.pod('plain'), lab.pod('web')];
    await lab.startServer('late', APP_PORT);
    await lab.startServer('plain', APP_PORT);
    // Meanwhile a pod of the mesh starts on node-b (its own agent captures it), and one outside it.
    await call({ op: 'put', resource: 'namespaces', obj: namespaceObject('legacy') });
    await call({ op: 'put', resource: 'pods', obj: podObject({ name: 'plain', namespace: 'legacy', node: 'node-b', serviceAccount: 'plain', ip: plain.ip, hostIP: lab.node('node-b').ip }) });
    await call({ op: 'put', resource: 'pods', obj: podOf('late') });
    await expectNode('node-b', { ips: [lab.pod('db').ip, late.ip], ids: [id('db'), id('late')] });
    assert.ok(!(await lab.configDump(lab.node('node-a'))).workloads.some((w: { ip: string }) => w.ip === late.ip), 'node-a heard of late: nobody keeps the slices');

    const before = (await lab.accessLog('node-b')).length;
    const { result: r, segments } = await lab.capturing(lab.node('node-a'), () =>
      lab.client('web', { host: late.ip, port: APP_PORT, bytes: 4096, pattern: MARKER, timeoutMs: 10_000 }));
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(segments.filter((seg) => seg.payload.includes(MARKER)).length, 0, 'the payload crossed the node link in the clear');
    assert.ok(segments.some((seg) => seg.dstPort === 15008 && seg.payload.length > 0), 'no tunnel to late');
    const inbound = await eventually('node-b\'s inbound line for web to late', async () => (await lab.accessLog('node-b')).slice(before)
      .find((l) => l.route === 'inbound' && l.outcome === 'ok' && l.src?.principal === id('web') && l.dst?.workload === 'shop/late'), 5_000, 100);
    assert.equal(inbound.dst.principal, id('late'));
    const out = (await lab.accessLog('node-a')).find((l) => l.dst?.addr === `${late.ip}:${APP_PORT}`);
    assert.equal(out?.route, 'tunnel');
    assert.equal(out?.dst.principal, id('late'), 'the identity node-b vouched for');

    // A pod outside the mesh: nothing answers at its tunnel port; dialled as web, which it sees.
    const who = await lab.client('web', { host: plain.ip, port: APP_PORT, mode: 'whoami', timeoutMs: 10_000 });
    assert.ok(who.ok, JSON.stringify(who));
    assert.equal(who.results[0]?.reply, web.ip, 'the pod outside the mesh saw another address than its client\'s');
    const passed = await eventually('node-a\'s line for plain', async () => (await lab.accessLog('node-a')).find((l) => l.dst?.addr === `${plain.ip}:${APP_PORT}`), 5_000, 100);
    assert.equal(passed.route, 'passthrough');
  });
});
