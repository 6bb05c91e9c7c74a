import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import pino from 'pino';
import { createKubernetesSource, type KubernetesSource } from '../../src/workloads/kubernetes.ts';
import { addressPod, POD_FIELD_SELECTOR, slimEndpointSlice, slimNamespace, slimNode, slimPod, slimService } from '../../src/workloads/kubernetes-objects.ts';
import { buildServices, buildSnapshot, canonicalRange, clusterPodRanges, meshMembership, mtlsModes } from '../../src/workloads/kubernetes-snapshot.ts';
import type { MeshPolicyObject, MeshSnapshot } from '../../src/workloads/model.ts';
import { MeshPolicyEngine } from '../../src/policy/engine.ts';
import { WorkloadRegistry } from '../../src/workloads/registry.ts';
import { ApiStandIn, endpointSliceObject, namespaceObject, nodeObject, podObject, serviceObject } from '../support/apiserver.ts';
import { eventually } from '../support/wait.ts';

const log = pino({ level: 'silent' });

const until = <T>(what: string, probe: () => T | undefined | false) => eventually(what, probe, 5000, 10);

describe('mesh membership', () => {
  const ns = (capture?: 'enabled' | 'disabled') => slimNamespace(namespaceObject('shop', capture));
  const pod = (o: Partial<Parameters<typeof podObject>[0]> = {}) => slimPod(podObject({ name: 'web-1', namespace: 'shop', node: 'node-a', ip: '10.1.0.10', ...o }));
  const cases: Array<[string, ReturnType<typeof pod>, ReturnType<typeof ns> | undefined, string | true]> = [
    ['opted-in namespace, running pod', pod(), ns('enabled'), true],
    ['namespace without the annotation', pod(), slimNamespace(namespaceObject('shop')), 'namespace not opted in'],
    ['namespace disabled', pod(), ns('disabled'), 'namespace not opted in'],
    ['namespace not seen yet', pod(), undefined, 'namespace unknown'],
    ['pod opts out', pod({ annotations: { 'meshlet.dev/capture': 'disabled' } }), ns('enabled'), 'pod opted out'],
    ['hostNetwork pod', pod({ hostNetwork: true }), ns('enabled'), 'hostNetwork'],
    ['pod without an IP', pod({ ip: undefined }), ns('enabled'), 'no IPv4 address yet'],
    ['finished pod', pod({ phase: 'Succeeded' }), ns('enabled'), 'phase Succeeded'],
    ['failed pod', pod({ phase: 'Failed' }), ns('enabled'), 'phase Failed'],
    ['IPv6-only pod', pod({ ips: ['fd00::10'] }), ns('enabled'), 'no IPv4 address yet'],
    ['unscheduled pod', pod({ node: '' }), ns('enabled'), 'not scheduled'],
  ];
  for (const [name, p, n, want] of cases) {
    it(name, () => {
      const m = meshMembership(p, n);
      if (want === true) assert.deepEqual(m, { meshed: true, ip: '10.1.0.10' });
      else assert.deepEqual(m, { meshed: false, reason: want });
    });
  }

  it('takes the IPv4 address of a dual-stack pod, whichever comes first', () => {
    assert.deepEqual(meshMembership(pod({ ips: ['fd00::10', '10.1.0.11'] }), ns('enabled')), { meshed: true, ip: '10.1.0.11' });
  });

  it('keeps a dual-stack pod\'s IPv6 address for the IPv6 guard, and none for a single-stack pod', () => {
    const nsMap = new Map([['shop', ns('enabled')]]);
    const [dual] = buildSnapshot('example.org', [pod({ ips: ['fd00::10', '10.1.0.11'] })], nsMap).workloads;
    assert.deepEqual([dual?.ip, dual?.ipv6], ['10.1.0.11', 'fd00::10']);
    const [single] = buildSnapshot('example.org', [pod()], nsMap).workloads;
    assert.equal(single && 'ipv6' in single, false);
  });

  it('keeps only what meshlet reads: no managedFields, spec.containers, container statuses or foreign annotations', () => {
    const p = pod({ annotations: { 'meshlet.dev/capture': 'disabled' } });
    assert.deepEqual(p.metadata.annotations, { 'meshlet.dev/capture': 'disabled' });
    assert.equal((p.metadata as any).managedFields, undefined);
    assert.equal((p.spec as any).containers, undefined);
    assert.equal((p.status as any).containerStatuses, undefined);
    assert.deepEqual(p.metadata.labels, { app: 'web-1' });
  });

  it('reads mTLS modes from the namespace annotation; anything but strict or permissive counts as strict', () => {
    const ns = (name: string, mtls?: string) => {
      const n = slimNamespace(namespaceObject(name, 'enabled'));
      if (mtls) n.metadata.annotations = { ...n.metadata.annotations, 'meshlet.dev/mtls': mtls };
      return [name, n] as const;
    };
    assert.deepEqual(mtlsModes(new Map([ns('a', 'strict'), ns('b', 'permissive'), ns('c'), ns('d', 'STRICT')])), { a: 'strict', b: 'permissive', d: 'strict' });
  });

  it('builds identities and nodes; an IP held by a terminating pod and a new one goes to the new one', () => {
    const nsMap = new Map([['shop', ns('enabled')]]);
    const old = pod({ name: 'web-old', serviceAccount: 'web-v1' });
    old.metadata.deletionTimestamp = '2026-11-24T11:00:00Z';
    const fresh = pod({ name: 'web-new', serviceAccount: 'web-v2', hostIP: '192.0.2.7' });
    const s = buildSnapshot('example.org', [old, fresh, pod({ name: 'db-1', ip: '10.1.0.20', serviceAccount: 'db', node: 'node-b', hostIP: '192.0.2.8' })], nsMap);
    assert.deepEqual(s.workloads.map((w) => [w.name, w.ip, w.node, w.spiffeId]), [
      ['web-new', '10.1.0.10', 'node-a', 'spiffe://example.org/ns/shop/sa/web-v2'],
      ['db-1', '10.1.0.20', 'node-b', 'spiffe://example.org/ns/shop/sa/db'],
    ]);
    assert.deepEqual(s.nodes, [{ name: 'node-a', ip: '192.0.2.1' }, { name: 'node-b', ip: '192.0.2.8' }]);
  });
});

describe('addresses a pod may not have (a compromised kubelet writes its pods\' status)', () => {
  const nsMap = new Map([['shop', slimNamespace(namespaceObject('shop', 'enabled')), ], ['kube-system', slimNamespace(namespaceObject('kube-system', 'enabled'))]]);
  const pod = (o: Partial<Parameters<typeof podObject>[0]> = {}) => slimPod(podObject({ name: 'web-1', namespace: 'shop', node: 'node-a', serviceAccount: 'web', ip: '10.1.0.10', ...o }));
  const nodes = new Map([['node-a', slimNode(nodeObject('node-a', ['10.1.0.0/24']))], ['node-b', slimNode(nodeObject('node-b', ['10.1.1.0/24', 'fd00:1::/64']))]]);
  const build = (pods: ReturnType<typeof pod>[], holders?: Map<string, string>) => buildSnapshot('example.org', pods, nsMap, { nodes, ...(holders ? { holders } : {}) });

  it('refuses a mirror pod, whatever namespace and address it claims', () => {
    const mirror = pod({ name: 'kube-apiserver-node-b', namespace: 'kube-system', node: 'node-b', ip: '10.1.1.20', annotations: { 'kubernetes.io/config.mirror': 'abc' } });
    delete mirror.spec.serviceAccountName;
    const s = build([mirror]);
    assert.deepEqual(s.workloads, []);
    assert.deepEqual(s.refused, [{ pod: 'kube-system/kube-apiserver-node-b', node: 'node-b', ip: '10.1.1.20', reason: 'mirror_pod' }]);
    const withSa = pod({ name: 'm', node: 'node-b', ip: '10.1.1.21', annotations: { 'kubernetes.io/config.mirror': 'abc' } });
    assert.equal(build([withSa]).refused?.[0]?.reason, 'mirror_pod');
  });

  it('refuses a pod without a service account (no "default" made up for it)', () => {
    const bare = pod();
    delete bare.spec.serviceAccountName;
    const s = build([bare]);
    assert.deepEqual(s.workloads, []);
    assert.equal(s.refused?.[0]?.reason, 'no_service_account');
  });

  it('refuses an address outside its node\'s podCIDRs, and checks none where the node has no ranges', () => {
    const s = build([pod({ name: 'liar', node: 'node-b', ip: '10.1.0.10' }), pod({ name: 'db', node: 'node-b', ip: '10.1.1.20' })]);
    assert.deepEqual(s.workloads.map((w) => w.name), ['db']);
    assert.deepEqual(s.refused, [{ pod: 'shop/liar', node: 'node-b', ip: '10.1.0.10', reason: 'outside_pod_cidrs' }]);
    assert.deepEqual(buildSnapshot('example.org', [pod({ node: 'node-c', ip: '172.16.0.9' })], nsMap, { nodes }).workloads.map((w) => w.ip), ['172.16.0.9']);
  });

  it('keeps for the address controller only the label that names the workload, and the same workload and entry', () => {
    const o = podObject({ name: 'web-7d9f-x2', namespace: 'shop', node: 'node-a', serviceAccount: 'web', ip: '10.1.0.10', labels: { app: 'web', tier: 'front', 'pod-template-hash': '7d9f' } });
    (o.metadata as any).ownerReferences = [{ kind: 'ReplicaSet', name: 'web-7d9f', controller: true }];
    const slim = addressPod(o);
    assert.deepEqual(slim.metadata.labels, { 'pod-template-hash': '7d9f' });
    assert.equal(addressPod(podObject({ name: 'bare', namespace: 'shop', node: 'node-a', ip: '10.1.0.11' })).metadata.labels, undefined);
    const full = buildSnapshot('example.org', [slimPod(o)], nsMap, { nodes }).workloads[0]!;
    const trimmed = buildSnapshot('example.org', [slim], nsMap, { nodes }).workloads[0]!;
    assert.equal(trimmed.workload, 'web');
    assert.deepEqual({ ...trimmed, labels: {} }, { ...full, labels: {} });
  });

  it('gives the cluster\'s pod ranges as ipset and nft print them: host bits cleared, each once, IPv4 only', () => {
    assert.equal(canonicalRange('10.244.1.7/24'), '10.244.1.0/24');
    assert.equal(canonicalRange('10.244.0.0/16'), '10.244.0.0/16');
    assert.equal(canonicalRange('192.168.3.129/25'), '192.168.3.128/25');
    assert.equal(canonicalRange('10.1.2.3/32'), '10.1.2.3/32');
    for (const bad of ['10.0.0.0/33', '300.0.0.0/8', 'fd00::/64', '10.0.0.0', '10.0.0.0/8 x']) assert.equal(canonicalRange(bad), undefined, bad);
    const nodeOf = (name: string, cidrs: string[]) => slimNode({ metadata: { name }, spec: { podCIDRs: cidrs } });
    assert.deepEqual(clusterPodRanges([nodeOf('b', ['10.1.1.0/24', 'fd00:1::/64']), nodeOf('a', ['10.1.0.5/24']), nodeOf('c', ['10.1.1.0/24']), nodeOf('d', [])]),
      ['10.1.0.0/24', '10.1.1.0/24']);
  });

  it('never gives a live pod\'s address to a pod on another node, newer or not; same node reuse still goes to the new pod', () => {
    const noRanges = new Map<string, never>();
    const victim = pod({ name: 'victim', node: 'node-a', ip: '10.1.0.10' });
    victim.metadata.creationTimestamp = '2026-11-24T10:00:00Z';
    const thief = pod({ name: 'thief', node: 'node-b', ip: '10.1.0.10', serviceAccount: 'admin' });
    thief.metadata.creationTimestamp = '2026-11-24T11:00:00Z';
    for (const order of [[victim, thief], [thief, victim]]) {
      const s = buildSnapshot('example.org', order, nsMap, { nodes: noRanges });
      assert.deepEqual(s.workloads.map((w) => [w.name, w.node]), [['victim', 'node-a']]);
      assert.deepEqual(s.refused, [{ pod: 'shop/thief', node: 'node-b', ip: '10.1.0.10', reason: 'address_held_elsewhere', holder: 'shop/victim' }]);
    }
    // An older pod created to claim the address later does not take it from the holder either.
    const early = pod({ name: 'early', node: 'node-b', ip: '10.1.0.10' });
    early.metadata.creationTimestamp = '2026-11-24T09:00:00Z';
    const s = buildSnapshot('example.org', [victim, early], nsMap, { nodes: noRanges, holders: new Map([['10.1.0.10', 'shop/victim']]) });
    assert.deepEqual(s.workloads.map((w) => w.name), ['victim']);
    assert.equal(s.refused?.[0]?.pod, 'shop/early');
    // A terminating holder on another node hands the address on (cluster-wide IPAM reuses addresses).
    const leaving = pod({ name: 'leaving', node: 'node-a', ip: '10.1.0.10' });
    leaving.metadata.deletionTimestamp = '2026-11-24T12:00:00Z';
    assert.deepEqual(buildSnapshot('example.org', [leaving, thief], nsMap, { nodes: noRanges }).workloads.map((w) => w.name), ['thief']);
  });
});

describe('Services from Services and EndpointSlices', () => {
  const svc = (o: Partial<Parameters<typeof serviceObject>[0]> = {}) => slimService(serviceObject({
    name: 'api', namespace: 'shop', clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80, targetPort: 'http' }, { name: 'admin', port: 81 }], ...o,
  }));
  const slice = (name: string, o: Partial<Parameters<typeof endpointSliceObject>[0]> = {}) => slimEndpointSlice(endpointSliceObject({
    name, namespace: 'shop', service: 'api', endpoints: [], ports: [{ name: 'http', port: 8080 }, { name: 'admin', port: 81 }], ...o,
  }));

  it('merges the slices of a Service, by address, with the slices\' resolved target ports', () => {
    const [api] = buildServices([svc({ trafficDistribution: 'PreferClose' })], [
      slice('api-a', { endpoints: [{ ip: '10.1.0.21', node: 'node-a' }, { ip: '10.1.1.21', node: 'node-b', ready: false }] }),
      // A rollout: new pods whose named port resolves elsewhere, one address in both slices.
      slice('api-b', { endpoints: [{ ip: '10.1.1.22', node: 'node-b', ready: null }, { ip: '10.1.1.21', node: 'node-b', ready: true }], ports: [{ name: 'http', port: 9090 }] }),
      slice('other', { service: 'web', endpoints: [{ ip: '10.1.0.99' }] }),
      slice('v6', { addressType: 'IPv6', endpoints: [{ ip: 'fd00::1' }] }),
    ]);
    assert.ok(api);
    assert.equal(api.preferClose, true);
    assert.deepEqual(api.ports, [{ name: 'http', port: 80 }, { name: 'admin', port: 81 }]);
    assert.deepEqual(api.endpoints.map((e) => [e.ip, e.node, e.ready, e.ports]), [
      ['10.1.0.21', 'node-a', true, { http: 8080, admin: 81 }],
      ['10.1.1.21', 'node-b', true, { http: 9090, admin: 81 }],
      ['10.1.1.22', 'node-b', true, { http: 9090 }],
    ]);
  });

  it('leaves out headless and ExternalName Services and non-TCP ports; keeps a Service without endpoints', () => {
    const out = buildServices([
      svc({ name: 'headless', clusterIP: 'None' }),
      svc({ name: 'ext', type: 'ExternalName', clusterIP: '' }),
      svc({ name: 'dns', clusterIP: '10.96.0.53', ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53 }] }),
      svc({ name: 'lonely', clusterIP: '10.96.0.11' }),
    ], []);
    assert.deepEqual(out.map((s) => [s.name, s.ports.map((p) => p.name), s.endpoints.length]), [['dns', ['dns-tcp'], 0], ['lonely', ['http', 'admin'], 0]]);
  });
});

describe('Kubernetes source against the API stand-in', () => {
  let api: ApiStandIn;
  let source: KubernetesSource;
  const registry = new WorkloadRegistry('node-a');
  const snapshots: MeshSnapshot[] = [];
  const ips = () => new Set(registry.snapshot?.workloads.map((w) => w.ip));
  const localIps = () => new Set(registry.localCaptured().map((w) => w.ip));
  const has = (...want: string[]) => () => want.every((ip) => ips().has(ip));
  const lacks = (...gone: string[]) => () => gone.every((ip) => !ips().has(ip));

  before(async () => {
    api = await ApiStandIn.start();
    api.put('namespaces', namespaceObject('shop', 'enabled'));
    api.put('namespaces', namespaceObject('blog'));
    api.put('namespaces', namespaceObject('kube-system'));
    api.put('nodes', nodeObject('node-a', ['10.1.0.0/24']));
    api.put('nodes', nodeObject('node-b', ['10.1.1.0/24']));
    api.put('pods', podObject({ name: 'web-1', namespace: 'shop', node: 'node-a', serviceAccount: 'web', ip: '10.1.0.10' }));
    api.put('pods', podObject({ name: 'web-2', namespace: 'shop', node: 'node-a', serviceAccount: 'web', ip: '10.1.0.11' }));
    api.put('pods', podObject({ name: 'db-1', namespace: 'shop', node: 'node-b', serviceAccount: 'db', ip: '10.1.1.20' }));
    api.put('pods', podObject({ name: 'legacy', namespace: 'shop', node: 'node-a', ip: '10.1.0.12', annotations: { 'meshlet.dev/capture': 'disabled' } }));
    api.put('pods', podObject({ name: 'post-1', namespace: 'blog', node: 'node-a', ip: '10.1.0.30' }));
    api.put('pods', podObject({ name: 'kube-proxy-x', namespace: 'kube-system', node: 'node-a', ip: '192.0.2.1', hostNetwork: true }));
    api.put('pods', podObject({ name: 'migrate-1', namespace: 'shop', node: 'node-a', phase: 'Succeeded' }));
    // Start with the apiserver down: the agent must wait and retry, not crash or publish nothing-as-everything.
    api.down = true;
    source = createKubernetesSource({ kubeConfig: api.kubeConfig(), trustDomain: 'cluster.local', log, pageSize: 2, retryBaseMs: 50, retryMaxMs: 200, debounceMs: 5 });
    await source.start({ onSnapshot: (s) => { snapshots.push(s); registry.replace(s); }, onError: (e) => { throw e; } });
  });
  after(async () => {
    await source?.close();
    await api?.close();
  });

  it('publishes nothing while the apiserver is down at start, then syncs once it answers', async () => {
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(snapshots.length, 0);
    assert.equal(source.status().synced, false);
    assert.match(source.status().lastError ?? '', /^(pods|namespaces|meshpolicies|services|endpointslices|nodes): /);
    api.down = false;
    await until('first sync', () => registry.synced);
    assert.deepEqual(ips(), new Set(['10.1.0.10', '10.1.0.11', '10.1.1.20']));
    assert.deepEqual(localIps(), new Set(['10.1.0.10', '10.1.0.11']));
    assert.equal(snapshots.length, 1, 'the first sync is one snapshot, not one per object');
  });

  it('lists in pages and watches pods with the field selector; hostNetwork and finished pods never arrive', async () => {
    const podCalls = api.requests.filter((r) => r.path.startsWith('/api/v1/pods?'));
    const lists = podCalls.filter((r) => !r.path.includes('watch=true'));
    assert.ok(lists.length >= 3, `6 pods in pages of 2 but only ${lists.length} list calls`);
    assert.ok(lists.some((r) => r.path.includes('continue=')));
    await until('pod watch', () => api.watching('pods') > 0);
    const watches = api.requests.filter((r) => r.path.startsWith('/api/v1/pods?') && r.path.includes('watch=true'));
    for (const r of [...lists, ...watches]) assert.equal(new URL(r.path, 'http://x').searchParams.get('fieldSelector'), POD_FIELD_SELECTOR);
    assert.ok(watches.every((r) => r.path.includes('allowWatchBookmarks=true')));
    assert.equal(source.status().pods, 5, 'the informer caches 5 pods: not kube-proxy (hostNetwork) nor migrate-1 (Succeeded)');
  });

  it('follows pods: created, IP changed, finished, deleted', async () => {
    api.put('pods', podObject({ name: 'web-3', namespace: 'shop', node: 'node-a', serviceAccount: 'web' }));
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(!ips().has(''), 'a pod without an IP is not in the registry');
    api.update('pods', 'shop', 'web-3', (p: any) => { p.status.podIP = '10.1.0.13'; p.status.podIPs = [{ ip: '10.1.0.13' }]; });
    await until('web-3 added', has('10.1.0.13'));
    assert.ok(localIps().has('10.1.0.13'));
    api.update('pods', 'shop', 'web-3', (p: any) => { p.status.podIP = '10.1.0.14'; p.status.podIPs = [{ ip: '10.1.0.14' }]; });
    await until('web-3 moved to .14', () => has('10.1.0.14')() && lacks('10.1.0.13')());
    // Finishing drops out of the field selector: the apiserver sends DELETED.
    api.update('pods', 'shop', 'web-2', (p: any) => { p.status.phase = 'Succeeded'; });
    await until('web-2 finished', lacks('10.1.0.11'));
    api.remove('pods', 'shop', 'web-3');
    await until('web-3 deleted', lacks('10.1.0.14'));
    assert.deepEqual(localIps(), new Set(['10.1.0.10']));
  });

  it('follows namespace annotations both ways, and pod opt-out', async () => {
    api.update('namespaces', undefined, 'blog', (n: any) => { n.metadata.annotations = { 'meshlet.dev/capture': 'enabled' }; });
    await until('blog opted in', has('10.1.0.30'));
    assert.ok(lacks('10.1.0.12')(), 'the opted-out pod in shop stays out');
    api.update('pods', 'shop', 'legacy', (p: any) => { delete p.metadata.annotations['meshlet.dev/capture']; });
    await until('legacy opted back in', has('10.1.0.12'));
    api.update('namespaces', undefined, 'shop', (n: any) => { delete n.metadata.annotations; });
    await until('shop released', lacks('10.1.0.10', '10.1.0.12', '10.1.1.20'));
    assert.deepEqual(ips(), new Set(['10.1.0.30']));
    api.update('namespaces', undefined, 'shop', (n: any) => { n.metadata.annotations = { 'meshlet.dev/capture': 'enabled' }; });
    await until('shop back', has('10.1.0.10', '10.1.0.12', '10.1.1.20'));
  });

  it('resumes a watch broken mid-stream from its resourceVersion, without a re-list', async () => {
    const lists = source.status().lists;
    api.breakWatches();
    api.put('pods', podObject({ name: 'web-4', namespace: 'shop', node: 'node-a', serviceAccount: 'web', ip: '10.1.0.15' }));
    await until('web-4 after reconnect', has('10.1.0.15'));
    assert.equal(source.status().lists, lists, 'no re-list: the watch resumed');
  });

  it('re-lists after 410 Gone (history compacted while disconnected), keeping known pods in between', async () => {
    const lists = source.status().lists;
    const before = snapshots.length;
    api.down = true;
    api.breakWatches();
    api.remove('pods', 'shop', 'web-4');
    api.put('pods', podObject({ name: 'web-5', namespace: 'shop', node: 'node-a', serviceAccount: 'web', ip: '10.1.0.16' }));
    api.compact();
    await new Promise((r) => setTimeout(r, 150));
    assert.ok(has('10.1.0.10', '10.1.0.15')(), 'while the apiserver is away the last known pods stay');
    api.down = false;
    await until('re-listed state', () => has('10.1.0.16')() && lacks('10.1.0.15')());
    await until('both informers re-listed', () => source.status().lists >= lists + 2);
    for (const s of snapshots.slice(before)) assert.ok(s.workloads.some((w) => w.ip === '10.1.0.10'), 'no snapshot in between dropped a live pod');
  });

  it('re-lists after an ERROR 410 event in an open watch', async () => {
    const lists = source.status().lists;
    await until('watches open', () => api.watching('pods') > 0 && api.watching('namespaces') > 0);
    api.expireWatches();
    api.put('pods', podObject({ name: 'web-6', namespace: 'shop', node: 'node-a', serviceAccount: 'web', ip: '10.1.0.17' }));
    await until('web-6 after re-list', has('10.1.0.17'));
    await until('both re-listed', () => source.status().lists >= lists + 2);
  });

  it('runs without the MeshPolicy CRD, and picks policies up once it is installed', async () => {
    assert.equal(source.status().policies, 'crd-not-installed');
    assert.equal(registry.snapshot?.policies.length, 0);
    api.missing.delete('meshpolicies');
    const spec = { selector: { matchLabels: { app: 'db' } }, action: 'ALLOW', rules: [{ from: [{ principals: ['spiffe://cluster.local/ns/shop/sa/web'] }] }] };
    api.put('meshpolicies', { apiVersion: 'meshlet.dev/v1alpha1', kind: 'MeshPolicy', metadata: { name: 'db-clients', namespace: 'shop' }, spec });
    await until('policy listed', () => registry.snapshot?.policies.length === 1);
    assert.deepEqual(registry.snapshot?.policies, [{ namespace: 'shop', name: 'db-clients', spec }]);
    api.update('meshpolicies', 'shop', 'db-clients', (p: any) => { p.spec.action = 'DENY'; });
    await until('policy updated', () => registry.snapshot?.policies[0]?.spec.action === 'DENY');
    // An object the CRD's schema refuses (a condition meshlet does not know) carries its problems:
    // the engine then enforces it closed (a DENY denies everything it selects), never as if the
    // field were not there.
    api.update('meshpolicies', 'shop', 'db-clients', (p: any) => { p.spec.rules[0].when = [{ key: 'request.time' }]; });
    const first = (): MeshPolicyObject | undefined => registry.snapshot?.policies[0];
    await until('problems attached', () => first()?.problems !== undefined);
    assert.deepEqual(first()?.problems, ['spec.rules[0]: unknown field "when"']);
    const engine = new MeshPolicyEngine();
    engine.update(registry.snapshot!);
    const compiled = (engine.dump() as { policies: Array<{ errors?: string[] }> }).policies[0]!;
    assert.ok(compiled.errors?.includes('spec.rules[0]: unknown field "when"'), JSON.stringify(compiled));
    api.remove('meshpolicies', 'shop', 'db-clients');
    await until('policy deleted', () => registry.snapshot?.policies.length === 0);
    assert.equal(source.status().policies, 0);
  });

  it('bookmarks advance the resume point, so a quiet watch resumes without 410 after compaction', async () => {
    await until('watches open', () => api.watching('pods') > 0 && api.watching('namespaces') > 0 && api.watching('meshpolicies') > 0);
    // Changes elsewhere (a Secret) move the apiserver's resourceVersion but not these watches'.
    for (let i = 0; i < 3; i++) api.put('secrets', { metadata: { name: `s${i}`, namespace: 'shop' }, data: {} });
    api.bookmark();
    await until('bookmark seen', () => Object.values(source.status().resourceVersions).every((rv) => rv === api.resourceVersion));
    const lists = source.status().lists;
    api.compact();
    api.breakWatches();
    api.put('pods', podObject({ name: 'web-7', namespace: 'shop', node: 'node-a', serviceAccount: 'web', ip: '10.1.0.18' }));
    await until('web-7', has('10.1.0.18'));
    assert.equal(source.status().lists, lists, 'resumed from the bookmark: no re-list');
  });

  it('follows Services and their EndpointSlices, and applies endpoint changes', async () => {
    api.put('services', serviceObject({ name: 'api', namespace: 'shop', clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80, targetPort: 'http' }] }));
    api.put('endpointslices', endpointSliceObject({ name: 'api-x1', namespace: 'shop', service: 'api', endpoints: [{ ip: '10.1.0.10', node: 'node-a' }, { ip: '10.1.1.20', node: 'node-b' }], ports: [{ name: 'http', port: 8080 }] }));
    const endpointsOf = () => registry.findService('10.96.0.10', 80)?.service.endpoints.filter((e) => e.ready).map((e) => `${e.ip}:${e.ports.http}`) ?? [];
    await until('the Service and its endpoints', () => endpointsOf().length === 2);
    assert.deepEqual(endpointsOf(), ['10.1.0.10:8080', '10.1.1.20:8080']);
    api.update('endpointslices', 'shop', 'api-x1', (o) => { (o.endpoints as Array<{ conditions: { ready: boolean } }>)[1]!.conditions.ready = false; });
    await until('db-1 not ready', () => endpointsOf().length === 1);
    api.remove('services', 'shop', 'api');
    await until('the Service gone', () => registry.findService('10.96.0.10', 80) === undefined);
    assert.equal(source.status().endpointSlices, 1);
  });

  it('refuses a mirror pod, an address outside its node\'s range and a live pod\'s address taken on another node; logged in status and snapshot', async () => {
    // What a compromised node-b could write: a mirror pod in an opted-in namespace, and a pod of its
    // own claiming web-1's address (on node-a) and outside node-b's range.
    const mirror = podObject({ name: 'static-b', namespace: 'shop', node: 'node-b', ip: '10.1.1.40', annotations: { 'kubernetes.io/config.mirror': 'x' } });
    delete (mirror.spec as { serviceAccountName?: string }).serviceAccountName;
    api.put('pods', mirror);
    api.put('pods', podObject({ name: 'thief', namespace: 'shop', node: 'node-b', serviceAccount: 'admin', ip: '10.1.0.10' }));
    await until('both refused', () => (registry.snapshot?.refused ?? []).length === 2);
    assert.deepEqual(registry.snapshot?.refused?.map((r) => [r.pod, r.reason]).sort(), [['shop/static-b', 'mirror_pod'], ['shop/thief', 'outside_pod_cidrs']]);
    assert.equal(registry.findWorkload('10.1.0.10')?.name, 'web-1', 'the victim keeps its address and identity');
    assert.equal(registry.findWorkload('10.1.1.40'), undefined);

    // Without podCIDRs (a CNI that assigns addresses itself) the holder still keeps its address.
    api.update('nodes', undefined, 'node-b', (n: any) => { n.spec = {}; });
    await until('the conflict instead', () => registry.snapshot?.refused?.some((r) => r.reason === 'address_held_elsewhere'));
    const conflict = registry.snapshot?.refused?.find((r) => r.reason === 'address_held_elsewhere');
    assert.deepEqual(conflict, { pod: 'shop/thief', node: 'node-b', ip: '10.1.0.10', reason: 'address_held_elsewhere', holder: 'shop/web-1' });
    assert.equal(registry.findWorkload('10.1.0.10')?.node, 'node-a');
    api.remove('pods', 'shop', 'thief');
    api.remove('pods', 'shop', 'static-b');
    await until('refusals gone', () => (registry.snapshot?.refused ?? []).length === 0);
  });
});

describe('Kubernetes source with a crowded namespace', () => {
  it('reads more objects in one namespace than fit as call arguments (client-node\'s list() spreads them)', () => {
    // 40,000 pods against a 200 KiB stack: ListWatch.list() overflowed it from about 32,000, as the
    // default stack overflows from about 120,000 (150,000 pods in one namespace: bench/scale.ts).
    const out = execFileSync(process.execPath, ['--stack-size=200', join(import.meta.dirname, '..', 'support', 'large-namespace.ts'), '40000'], { encoding: 'utf8', timeout: 120_000 });
    assert.deepEqual(JSON.parse(out), { meshPods: 40_000, cached: 40_000 });
  });
});
