// `meshlet check` after install: the cluster-wide view, judged from facts (pure) and read through the
// real CLI from the API stand-in, whose objects are those manifests/ installs.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type ClusterFacts, evaluateCluster, INSTALL } from '../../src/check/cluster.ts';
import { runCommand } from '../../src/capture/exec.ts';
import { CLI } from '../../src/demo/lab-spec.ts';
import { createRootCa } from '../../src/identity/ca.ts';
import { parseAllDocuments } from 'yaml';
import { ApiStandIn, namespaceObject, nodeObject, podObject, standInKubeConfig } from '../support/apiserver.ts';

const NOW = Date.parse('2026-12-04T00:00:00Z');
const DAY = 86_400_000;
const healthy: ClusterFacts = {
  server: 'https://api.example:6443',
  crd: true,
  daemonSet: { desired: 2, ready: 2, updated: 2 },
  ca: { replicas: 2, ready: 2 },
  roots: { notAfter: [new Date(NOW + 3650 * DAY).toISOString()] },
  nodes: [
    { name: 'node-a', agent: { pod: 'meshlet-agent-aaaaa', ready: true }, meshedPods: 3 },
    { name: 'node-b', agent: { pod: 'meshlet-agent-bbbbb', ready: true }, meshedPods: 0 },
  ],
  capturedNamespaces: ['shop'],
  rbac: { missing: [], checked: 23 },
};
const check = (facts: Partial<ClusterFacts>, name: string) => evaluateCluster({ ...healthy, ...facts }, NOW).find((c) => c.name === name)!;

describe('meshlet check (the cluster)', () => {
  it('passes a healthy install, a line per node', () => {
    const results = evaluateCluster(healthy, NOW);
    assert.deepEqual(results.filter((c) => c.level !== 'ok'), []);
    assert.deepEqual(results.map((c) => c.name), ['API', 'RBAC', 'CRD', 'CA', 'root', 'agents', 'node node-a', 'node node-b', 'captured namespaces']);
    assert.match(check({}, 'node node-a').detail, /ready \(capture, sets, certificates\); 3 meshed pods/);
  });

  it('fails what leaves pods refused or certificates unrenewed, saying what to do', () => {
    for (const [facts, name, detail, hint] of [
      [{ crd: false }, 'CRD', /not installed/, /kubectl apply -k manifests/],
      [{ rbac: { missing: [{ who: 'ca', permission: 'patch meshpolicies/status.meshlet.dev' }], checked: 23 } }, 'RBAC', /ca cannot patch meshpolicies\/status\.meshlet\.dev/, /ca-rbac\.yaml/],
      [{ ca: { replicas: 2, ready: 0 } }, 'CA', /0 of 2 replicas ready: no agent can renew/, /describe deploy meshlet-ca/],
      [{ ca: undefined }, 'CA', /no Deployment meshlet-system\/meshlet-ca/, /kubectl apply/],
      [{ roots: { notAfter: [new Date(NOW - DAY).toISOString()] } }, 'root', /expired/, /rotate the root/],
      [{ roots: { error: 'no ConfigMap meshlet-trust-bundle' } }, 'root', /no ConfigMap/, /CA publishes it/],
      [{ daemonSet: { desired: 2, ready: 1, updated: 2 } }, 'agents', /1 of 2 ready/, /rollout status/],
      [{ nodes: [{ name: 'node-a', agent: { pod: 'meshlet-agent-aaaaa', ready: false, reason: 'CrashLoopBackOff' }, meshedPods: 3 }] },
        'node node-a', /not ready \(CrashLoopBackOff\); 3 meshed pods, refused until it is/, /logs meshlet-agent-aaaaa/],
      [{ nodes: [{ name: 'node-c', agent: undefined, meshedPods: 1 }] }, 'node node-c', /no agent pod; 1 meshed pod, refused/, /taint/],
    ] as const) {
      const c = check(facts as Partial<ClusterFacts>, name);
      assert.equal(c.level, 'fail', `${name}: ${c.detail}`);
      assert.match(c.detail, detail);
      assert.match(c.hint ?? '', hint);
    }
  });

  it('warns of what needs doing soon or may not be meant', () => {
    assert.equal(check({ roots: { notAfter: [new Date(NOW + 10 * DAY).toISOString()] } }, 'root').level, 'warn');
    assert.match(check({ roots: { notAfter: [new Date(NOW + 10 * DAY).toISOString()] } }, 'root').detail, /in 10 days/);
    assert.equal(check({ ca: { replicas: 2, ready: 1 } }, 'CA').level, 'warn');
    assert.equal(check({ daemonSet: { desired: 2, ready: 2, updated: 1 } }, 'agents').level, 'warn');
    // A node with no agent and no meshed pod refuses nothing yet; the next pod there would be.
    assert.equal(check({ nodes: [{ name: 'node-c', agent: undefined, meshedPods: 0 }] }, 'node node-c').level, 'warn');
    assert.equal(check({ capturedNamespaces: [] }, 'captured namespaces').level, 'warn');
    assert.equal(check({ rbac: { error: 'the API answered 403 to a SubjectAccessReview' } }, 'RBAC').level, 'warn');
  });
});

describe('meshlet check against the API', () => {
  let api: ApiStandIn;
  let dir: string;
  const meshlet = (args: string[]) => runCommand(process.execPath, [CLI, 'check', '--kubeconfig', join(dir, 'kubeconfig'), ...args]);
  const agentPod = (node: string, ready: boolean) => {
    const p = podObject({ name: `meshlet-agent-${node}`, namespace: INSTALL.namespace, node, hostNetwork: true, labels: { 'app.kubernetes.io/name': INSTALL.agentLabel } });
    if (!ready) {
      (p.status as any).conditions = [{ type: 'Ready', status: 'False', reason: 'ContainersNotReady' }];
      (p.status as any).containerStatuses[0].state = { waiting: { reason: 'CrashLoopBackOff' } };
    }
    return p;
  };

  before(async () => {
    api = await ApiStandIn.start();
    dir = await mkdtemp(join(tmpdir(), 'meshlet-check-'));
    await writeFile(join(dir, 'kubeconfig'), api.kubeConfigYaml());
    const root = await createRootCa({ trustDomain: 'cluster.local' });
    for (const n of ['node-a', 'node-b', 'node-c']) api.put('nodes', nodeObject(n));
    api.put('namespaces', namespaceObject('shop', 'enabled'));
    api.put('namespaces', namespaceObject('legacy'));
    api.put('namespaces', namespaceObject(INSTALL.namespace));
    api.put('pods', podObject({ name: 'web', namespace: 'shop', node: 'node-a', ip: '10.1.0.11' }));
    api.put('pods', podObject({ name: 'db', namespace: 'shop', node: 'node-b', ip: '10.1.1.11' }));
    api.put('pods', podObject({ name: 'batch', namespace: 'legacy', node: 'node-c', ip: '10.1.2.11' }));
    api.put('pods', agentPod('node-a', true));
    api.put('pods', agentPod('node-b', false));
    // The RBAC the manifests install, which the stand-in's SubjectAccessReviews decide by.
    const kinds: Record<string, string> = { ClusterRole: 'clusterroles', ClusterRoleBinding: 'clusterrolebindings', Role: 'roles', RoleBinding: 'rolebindings' };
    for (const file of ['agent-rbac.yaml', 'ca-rbac.yaml']) {
      for (const doc of parseAllDocuments(await readFile(join(import.meta.dirname, '../../manifests', file), 'utf8'))) {
        const o = doc.toJS();
        const resource = kinds[o?.kind];
        if (!resource) continue;
        if (resource.startsWith('role')) o.metadata.namespace = INSTALL.namespace;
        api.put(resource, o);
      }
    }
    api.put('customresourcedefinitions', { metadata: { name: INSTALL.crd }, spec: {} });
    api.put('daemonsets', { metadata: { name: INSTALL.daemonSet, namespace: INSTALL.namespace }, status: { desiredNumberScheduled: 3, numberReady: 1, updatedNumberScheduled: 3 } });
    api.put('deployments', { metadata: { name: INSTALL.ca, namespace: INSTALL.namespace }, spec: { replicas: 2 }, status: { readyReplicas: 2 } });
    api.put('configmaps', { metadata: { name: INSTALL.bundle, namespace: INSTALL.namespace }, data: { [INSTALL.bundleKey]: root.certPem } });
  });
  after(async () => {
    await api?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('reads the install and every node, and exits 1 while a node with meshed pods has no ready agent', async () => {
    const r = await meshlet([]);
    assert.equal(r.code, 1, r.stderr);
    const line = (name: string) => r.stdout.split('\n').find((l) => new RegExp(`^\\S+\\s+${name}\\s`).test(l)) ?? '';
    assert.match(line('API'), /^ok\s+API\s+reachable at http:\/\/127\.0\.0\.1:\d+/);
    assert.match(line('RBAC'), /^ok\s+RBAC\s+the agent and the CA hold the \d+ permissions they use/);
    assert.match(line('CRD'), /^ok/);
    assert.match(line('CA'), /^ok\s+CA\s+2 of 2 replicas ready/);
    assert.match(line('root'), /^ok\s+root\s+1 in the trust bundle, the first ends 20\d\d-/);
    assert.match(line('agents'), /^fail\s+agents\s+1 of 3 ready, 3 updated/);
    assert.match(line('node node-a'), /^ok .*meshlet-agent-node-a ready .*; 1 meshed pod$/);
    assert.match(line('node node-b'), /^fail .*meshlet-agent-node-b not ready \(CrashLoopBackOff\); 1 meshed pod, refused until it is/);
    assert.match(line('node node-c'), /^warn .*no agent pod; 0 meshed pods/, 'batch is not in an opted-in namespace');
    assert.match(line('captured namespaces'), /^ok\s+captured namespaces\s+shop$/);

    const json = await meshlet(['--json']);
    assert.equal(json.code, 1);
    const results = JSON.parse(json.stdout) as Array<{ name: string; level: string }>;
    assert.deepEqual(results.filter((c) => c.level === 'fail').map((c) => c.name), ['agents', 'node node-b']);
  });

  it('exits 0 once every agent is ready', async () => {
    api.put('pods', agentPod('node-b', true));
    api.put('pods', agentPod('node-c', true));
    api.put('daemonsets', { metadata: { name: INSTALL.daemonSet, namespace: INSTALL.namespace }, status: { desiredNumberScheduled: 3, numberReady: 3, updatedNumberScheduled: 3 } });
    const r = await meshlet(['--json']);
    assert.equal(r.code, 0, r.stdout);
    assert.deepEqual((JSON.parse(r.stdout) as Array<{ level: string }>).filter((c) => c.level !== 'ok'), []);
  });

  it('names a permission the installed RBAC lacks', async () => {
    api.update('clusterroles', undefined, 'meshlet-ca', (o: any) => { o.rules = o.rules.filter((r: any) => !r.resources.includes('meshpolicies/status')); });
    try {
      const r = await meshlet([]);
      assert.equal(r.code, 1);
      assert.match(r.stdout, /^fail\s+RBAC\s+missing: ca cannot patch meshpolicies\/status\.meshlet\.dev$/m);
    } finally {
      api.update('clusterroles', undefined, 'meshlet-ca', (o: any) => { o.rules.push({ apiGroups: ['meshlet.dev'], resources: ['meshpolicies/status'], verbs: ['patch'] }); });
    }
  });

  it('reports an API it cannot reach as a failed check, not a stack trace', async () => {
    // A port that was free a moment ago: nothing listens there.
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise((r) => probe.close(r));
    const closed = join(dir, 'closed');
    await writeFile(closed, standInKubeConfig(`http://127.0.0.1:${port}`));
    const r = await runCommand(process.execPath, [CLI, 'check', '--kubeconfig', closed]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stdout, new RegExp(`^fail\\s+API\\s+http://127\\.0\\.0\\.1:${port}: fetch failed \\(ECONNREFUSED\\)`, 'm'));
    assert.match(r.stdout, /reachable from here/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  });
});
