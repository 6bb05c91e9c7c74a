// The install: `kubectl kustomize manifests/` must render, every object must validate against the
// Kubernetes OpenAPI schemas (kubernetes-models, offline), MeshPolicy objects against our CRD's
// schema, and the arguments the manifests pass to meshlet must parse with meshlet's own config.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Ajv } from 'ajv';
import { parseAllDocuments } from 'yaml';
import { loadAgentConfig } from '../src/config/agent.ts';
import { loadCaServeConfig } from '../src/config/ca.ts';
import { CaMetrics } from '../src/ca/metrics.ts';
import { loadInitConfig } from '../src/config/capture.ts';
import { POD_FIELD_SELECTOR } from '../src/workloads/kubernetes-objects.ts';
import { SLICE_CAPACITY, sliceObject } from '../src/addresses/slices.ts';
import { MeshMetrics } from '../src/telemetry/metrics.ts';

const ROOT = join(import.meta.dirname, '..', 'manifests');
type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; [k: string]: any }; [k: string]: any };

function render(dir = ROOT): K8sObject[] {
  const r = spawnSync('kubectl', ['kustomize', dir], { encoding: 'utf8' });
  if (r.error) {
    // Not a silent pass: the suite fails and says why.
    assert.fail(`kubectl is not installed on this machine (${r.error.message}); the manifests cannot be rendered. Install kubectl to run this test.`);
  }
  assert.equal(r.status, 0, `kubectl kustomize ${dir} failed:\n${r.stderr}`);
  return docs(r.stdout);
}

function docs(text: string): K8sObject[] {
  return parseAllDocuments(text).map((d) => {
    assert.equal(d.errors.length, 0, d.errors.join('\n'));
    return d.toJS() as K8sObject;
  }).filter(Boolean);
}

/** Validates one object with the kubernetes-models class for its apiVersion and kind. */
async function validateBuiltIn(o: K8sObject): Promise<void> {
  const [group, version] = o.apiVersion.includes('/') ? o.apiVersion.split('/') : ['', o.apiVersion];
  // The Prometheus Operator's kinds come from its own package of schemas.
  const pkg = group === 'monitoring.coreos.com' ? '@kubernetes-models/prometheus-operator' : 'kubernetes-models';
  const mod = await import(`${pkg}/${group ? `${group}/` : ''}${version}/${o.kind}`);
  const Model = mod[o.kind];
  new Model(o).validate();
}

/** The CRD's schema must be structural: no $ref, every node typed, arrays with items. */
function assertStructural(schema: any, path = 'openAPIV3Schema'): void {
  assert.ok(!('$ref' in schema), `${path}: $ref is not allowed in a structural schema`);
  const typed = 'type' in schema || schema['x-kubernetes-int-or-string'] || schema['x-kubernetes-preserve-unknown-fields'];
  assert.ok(typed, `${path}: no type`);
  if (schema.type === 'array') {
    assert.ok(schema.items, `${path}: array without items`);
    assert.ok(typeof schema.maxItems === 'number', `${path}: unbounded array (CEL cost and apiserver memory need maxItems)`);
    assertStructural(schema.items, `${path}.items`);
  }
  for (const [k, v] of Object.entries(schema.properties ?? {})) assertStructural(v, `${path}.${k}`);
  if (typeof schema.additionalProperties === 'object') assertStructural(schema.additionalProperties, `${path}.additionalProperties`);
}

describe('manifests', () => {
  const objects = render();
  const byKind = (kind: string, name?: string) => objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  const one = (kind: string, name: string) => {
    const found = byKind(kind, name);
    assert.equal(found.length, 1, `want one ${kind} ${name}`);
    return found[0]!;
  };
  const examples = readdirSync(join(ROOT, 'examples')).filter((f) => f.endsWith('.yaml'))
    .flatMap((f) => docs(readFileSync(join(ROOT, 'examples', f), 'utf8')));
  const crd = one('CustomResourceDefinition', 'meshpolicies.meshlet.dev');
  const meshPolicySchema = crd.spec.versions[0].schema.openAPIV3Schema;
  const ajv = new Ajv({ strict: false, validateFormats: false, allErrors: true });
  const validMeshPolicy = ajv.compile(meshPolicySchema);

  it('renders with kubectl kustomize into the whole install', () => {
    const kinds = objects.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    for (const want of ['Namespace/meshlet-system', 'CustomResourceDefinition/meshpolicies.meshlet.dev', 'ServiceAccount/meshlet-agent',
      'ServiceAccount/meshlet-ca', 'ClusterRole/meshlet-agent', 'ClusterRole/meshlet-ca', 'Role/meshlet-ca', 'DaemonSet/meshlet-agent',
      'Deployment/meshlet-ca', 'Service/meshlet-ca', 'PodDisruptionBudget/meshlet-ca']) assert.ok(kinds.includes(want), `missing ${want} in ${kinds.join(', ')}`);
    for (const o of objects) {
      const namespaced = !['Namespace', 'CustomResourceDefinition', 'ClusterRole', 'ClusterRoleBinding'].includes(o.kind);
      assert.equal(o.metadata.namespace, namespaced ? 'meshlet-system' : undefined, `${o.kind}/${o.metadata.name}`);
    }
  });

  it('validates every rendered and example object against the Kubernetes OpenAPI schemas', async () => {
    let checked = 0;
    for (const o of [...objects, ...examples]) {
      if (o.apiVersion === 'meshlet.dev/v1alpha1') continue;
      await assert.doesNotReject(validateBuiltIn(o), `${o.kind}/${o.metadata.name}`);
      checked++;
    }
    assert.ok(checked >= objects.length);
    // The validator bites: a DaemonSet with a string port and no containers fails.
    const broken = structuredClone(one('DaemonSet', 'meshlet-agent'));
    broken.spec.template.spec.containers[0].readinessProbe.httpGet.port = { not: 'a port' };
    await assert.rejects(validateBuiltIn(broken));
  });

  it('defines MeshPolicy with a structural schema that accepts the examples and rejects bad policies', () => {
    assertStructural(meshPolicySchema);
    const policies = examples.filter((o) => o.kind === 'MeshPolicy');
    assert.ok(policies.length > 0);
    for (const p of policies) assert.ok(validMeshPolicy(p), JSON.stringify(validMeshPolicy.errors));
    const base = policies[0]!;
    const bad: Array<[string, (p: any) => void]> = [
      ['unknown action', (p) => { p.spec.action = 'PERMIT'; }],
      ['port out of range', (p) => { p.spec.rules[0].to[0].ports = [70000]; }],
      ['wildcard inside a principal', (p) => { p.spec.rules[0].from[0].principals = ['spiffe://cluster.local/ns/*/sa/web']; }],
      ['namespace that is not a DNS label', (p) => { p.spec.rules[0].from[0].namespaces = ['Shop_1']; }],
      ['not a CIDR', (p) => { p.spec.rules[0].from[0].ipBlocks = ['ten.0.0.0/8']; }],
      ['no spec', (p) => { delete p.spec; }],
    ];
    for (const [what, change] of bad) {
      const p = structuredClone(base);
      change(p);
      assert.equal(validMeshPolicy(p), false, `${what} was accepted`);
    }
  });

  it('defines MeshAddressSlice with a structural schema that takes what the address controller writes', () => {
    const schema = one('CustomResourceDefinition', 'meshaddressslices.meshlet.dev').spec.versions[0].schema.openAPIV3Schema;
    assertStructural(schema);
    const valid = ajv.compile(schema);
    const entries = Array.from({ length: SLICE_CAPACITY }, (_, i) => ({ ip: `10.1.0.${i + 1}`, ipv6: `fd00::${i + 1}`, namespace: 'shop', serviceAccount: 'web', node: 'n1', captured: true, workload: 'web' }));
    const written = sliceObject('meshlet-system', 'n1-0a1b2c3d', 'n1', entries);
    assert.ok(valid(written), JSON.stringify(valid.errors));
    const [first] = written.entries as object[];
    assert.equal(valid({ ...written, entries: [{ ...first, captured: 'yes' }] }), false);
    assert.equal(valid({ ...written, entries: [{ ip: '10.1.0.1' }] }), false);
    assert.equal(valid({ ...written, node: undefined }), false);
  });

  it('describes every field of MeshPolicy\'s spec, for `kubectl explain meshpolicy.spec`', () => {
    const missing: string[] = [];
    const walk = (node: any, path: string) => {
      for (const [name, child] of Object.entries<any>(node.properties ?? {})) {
        if (!child.description) missing.push(`${path}.${name}`);
        walk(child, `${path}.${name}`);
        if (child.items) walk(child.items, `${path}.${name}[]`);
      }
    };
    walk({ properties: { spec: meshPolicySchema.properties.spec } }, '');
    assert.deepEqual(missing, []);
  });

  it('runs the agent as the design says: hostNetwork, init container, least capabilities, probes, rollout, tolerations, CA token', () => {
    const ds = one('DaemonSet', 'meshlet-agent');
    const pod = ds.spec.template.spec;
    assert.equal(pod.hostNetwork, true);
    assert.deepEqual(ds.spec.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
    assert.ok(pod.tolerations.some((t: any) => t.operator === 'Exists' && !t.key), 'tolerates every taint');
    const [init] = pod.initContainers;
    const [agent] = pod.containers;
    assert.equal(init.args[0], 'init');
    for (const c of [init, agent]) {
      assert.deepEqual(c.securityContext.capabilities, { drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW'] });
      assert.notEqual(c.securityContext.privileged, true);
      assert.equal(c.securityContext.allowPrivilegeEscalation, false);
      assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory, `${c.name} resources`);
      assert.match(c.image, /^ghcr\.io\/meshlet\/meshlet:/, 'the image comes from kustomize images:');
      // With hostNetwork a containerPort is a hostPort, which would keep the surge pod off the node.
      assert.equal(c.ports, undefined);
    }
    assert.deepEqual(agent.readinessProbe.httpGet, { path: '/healthz/ready', port: 15021 });
    // The old agent shares 15021 during an upgrade until the new one takes readiness over (admin/succession.ts).
    assert.ok(agent.readinessProbe.initialDelaySeconds >= 3, 'the first readiness probe waits for the new agent to start');
    const token = pod.volumes.find((v: any) => v.projected)?.projected.sources[0].serviceAccountToken;
    assert.equal(token.audience, 'meshlet-ca');
    assert.deepEqual(agent.env.find((e: any) => e.name === 'NODE_NAME').valueFrom, { fieldRef: { fieldPath: 'spec.nodeName' } });
    // The arguments are ones meshlet accepts, and name the files the volumes mount.
    const config = loadAgentConfig(agent.args.slice(1), { NODE_NAME: 'node-1', MESHLET_MEMORY_TARGET: limitMiB(agent) });
    assert.equal(config.nodeName, 'node-1');
    assert.equal(config.memoryTargetMiB, 512, 'the memory target is the container\'s limit');
    assert.deepEqual(config.workloads, { kind: 'kubernetes', kubeconfig: undefined, trustDomain: 'cluster.local' });
    assert.equal(config.identity.mode, 'ca-service');
    if (config.identity.mode === 'ca-service') {
      const mountOf = (name: string) => agent.volumeMounts.find((m: any) => m.name === name).mountPath;
      assert.equal(config.identity.tokenFile, `${mountOf('ca-token')}/${token.path}`);
      assert.equal(config.identity.trustBundleFile, `${mountOf('trust-bundle')}/trust-bundle.pem`);
      const svc = one('Service', 'meshlet-ca');
      assert.equal(config.identity.url, `https://${svc.metadata.name}.${svc.metadata.namespace}.svc:${svc.spec.ports[0].port}`);
    }
    assert.doesNotThrow(() => loadInitConfig(init.args.slice(1)));
  });

  it('runs the CA unprivileged behind a Service and a PodDisruptionBudget', () => {
    const ca = one('Deployment', 'meshlet-ca');
    const pod = ca.spec.template.spec;
    const [c] = pod.containers;
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.deepEqual(c.securityContext.capabilities, { drop: ['ALL'] });
    const config = loadCaServeConfig(c.args.slice(2), { MESHLET_MEMORY_TARGET: limitMiB(c) });
    assert.equal(config.backend.kind, 'kubernetes');
    assert.equal(config.memoryTargetMiB, 256, 'the memory target is the container\'s limit');
    assert.equal(config.port, c.ports[0].containerPort);
    const labels = pod.metadata?.labels ?? ca.spec.template.metadata.labels;
    for (const selector of [one('Service', 'meshlet-ca').spec.selector, one('PodDisruptionBudget', 'meshlet-ca').spec.selector.matchLabels]) {
      for (const [k, v] of Object.entries(selector)) assert.equal(labels[k], v, 'selector matches the CA pods');
    }
    assert.ok(ca.spec.replicas > one('PodDisruptionBudget', 'meshlet-ca').spec.minAvailable, 'a drain can evict one CA pod');
  });

  it('grants least privilege: a read-only agent but its own node\'s taint, no wildcards, the CA limited to its own Secret and ConfigMap', () => {
    for (const role of [...byKind('ClusterRole'), ...byKind('Role')]) {
      for (const rule of role.rules) {
        for (const field of ['apiGroups', 'resources', 'verbs']) assert.ok(!rule[field].includes('*'), `${role.kind}/${role.metadata.name} has a wildcard`);
      }
    }
    const agentRules = one('ClusterRole', 'meshlet-agent').rules;
    const writes = agentRules.filter((r: any) => r.verbs.some((v: string) => !['get', 'list', 'watch'].includes(v)));
    // The one write: patch on nodes (the taint gate), narrowed by an admission policy bound to it.
    assert.deepEqual(writes.map((r: any) => [r.apiGroups, r.resources, r.verbs]), [[[''], ['nodes'], ['patch']]]);
    const policy = one('ValidatingAdmissionPolicy', 'meshlet-agent-own-node-taint');
    assert.deepEqual(one('ValidatingAdmissionPolicyBinding', 'meshlet-agent-own-node-taint').spec, { policyName: policy.metadata.name, validationActions: ['Deny'] });
    assert.deepEqual(policy.spec.matchConstraints.resourceRules.map((r: any) => [r.resources, r.operations]), [[['nodes'], ['UPDATE']]]);
    assert.match(policy.spec.matchConditions[0].expression, /system:serviceaccount:meshlet-system:meshlet-agent/);
    const checks = policy.spec.validations.map((v: any) => v.expression).join('\n');
    for (const must of ["authentication.kubernetes.io/node-name'][0] == object.metadata.name", "t.key != 'meshlet.dev/agent-not-ready'", 'object.metadata.labels == oldObject.metadata.labels']) {
      assert.ok(checks.includes(must), must);
    }
    assert.equal(policy.spec.failurePolicy, 'Fail');
    // Every resource the Kubernetes source watches (nodes: for their podCIDRs).
    const agentResources = new Set(one('ClusterRole', 'meshlet-agent').rules.flatMap((r: any) => r.resources));
    for (const r of ['pods', 'namespaces', 'nodes', 'services', 'endpointslices', 'meshpolicies']) assert.ok(agentResources.has(r), r);
    // The agent watches pods with a field selector the apiserver supports for pods.
    for (const term of POD_FIELD_SELECTOR.split(',')) assert.match(term, /^(spec\.hostNetwork|status\.phase)!?=/);
    // The CA's cluster-wide writes: TokenReviews, and MeshPolicy status only, never a policy itself.
    const caWrites = one('ClusterRole', 'meshlet-ca').rules.filter((r: any) => r.verbs.some((v: string) => !['get', 'list', 'watch'].includes(v)));
    assert.deepEqual(caWrites.map((r: any) => [r.resources, r.verbs]), [[['tokenreviews'], ['create']], [['meshpolicies/status'], ['patch']]]);
    const caRole = one('Role', 'meshlet-ca');
    for (const rule of caRole.rules) {
      // The address slices are named as the controller creates them: the one kind written unnamed.
      if (rule.resources.includes('meshaddressslices')) assert.deepEqual(rule.resources, ['meshaddressslices']);
      else if (rule.verbs.includes('update') || rule.verbs.includes('get')) assert.ok(rule.resourceNames?.length, 'get/update limited by name');
    }
    // The agent's namespaced grants: reading the address slices and their writer's Lease.
    assert.deepEqual(one('Role', 'meshlet-agent').rules.map((r: any) => [r.resources, r.verbs, r.resourceNames]),
      [[['meshaddressslices'], ['list', 'watch'], undefined], [['leases'], ['get'], ['meshlet-address-controller']]]);
    const bindings = [...byKind('ClusterRoleBinding'), ...byKind('RoleBinding')];
    for (const b of bindings) assert.deepEqual(b.subjects.map((s: any) => `${s.namespace}/${s.name}`), [`meshlet-system/${b.metadata.name}`]);
  });

  describe('monitoring', () => {
    const monitoring = render(join(ROOT, 'monitoring'));
    const find = (kind: string, name?: string) => monitoring.find((o) => o.kind === kind && (!name || o.metadata.name === name))!;
    const dashboard = JSON.parse(find('ConfigMap').data['meshlet-dashboard.json']);
    const rules = find('PrometheusRule').spec.groups.flatMap((g: any) => g.rules);
    const exprs: string[] = [...rules.map((r: any) => r.expr), ...dashboard.panels.flatMap((p: any) => p.targets.map((t: any) => t.expr))];

    it('validates against the Kubernetes and Prometheus Operator schemas', async () => {
      assert.deepEqual(monitoring.map((o) => o.kind).sort(), ['ConfigMap', 'PodMonitor', 'PodMonitor', 'PrometheusRule']);
      for (const o of monitoring) await assert.doesNotReject(validateBuiltIn(o), `${o.kind}/${o.metadata.name}`);
      assert.equal(find('ConfigMap').metadata.labels.grafana_dashboard, '1');
    });

    it('scrapes the agents where they serve metrics', () => {
      const pm = find('PodMonitor', 'meshlet-agent');
      const ds = one('DaemonSet', 'meshlet-agent');
      for (const [k, v] of Object.entries(pm.spec.selector.matchLabels)) assert.equal(ds.spec.template.metadata.labels[k], v);
      const agent = loadAgentConfig(ds.spec.template.spec.containers[0].args.slice(1), { NODE_NAME: 'n' });
      assert.equal(pm.spec.podMetricsEndpoints[0].portNumber, agent.ports.metrics);
      assert.equal(ds.spec.template.metadata.annotations['prometheus.io/port'], String(agent.ports.metrics));
      for (const e of exprs.filter((x) => x.includes('job='))) assert.match(e, /job="meshlet-system\/meshlet-(agent|ca)"/, 'the PodMonitor job label is <namespace>/<name>');
    });

    it('scrapes the CA on the port its Deployment names, which is where `ca serve` listens', () => {
      const pm = find('PodMonitor', 'meshlet-ca');
      const deploy = one('Deployment', 'meshlet-ca');
      for (const [k, v] of Object.entries(pm.spec.selector.matchLabels)) assert.equal(deploy.spec.template.metadata.labels[k], v);
      const container = deploy.spec.template.spec.containers[0];
      const port = container.ports.find((p: any) => p.name === pm.spec.podMetricsEndpoints[0].port);
      assert.equal(port?.containerPort, loadCaServeConfig(container.args.slice(2), {}).metrics?.port);
    });

    it('alerts on agent down, certificates near expiry and deny spikes, using only metrics meshlet exports', async () => {
      const names = rules.map((r: any) => r.alert);
      for (const want of ['MeshletAgentDown', 'MeshletCertificateExpiringSoon', 'MeshletPolicyDenySpike', 'MeshletCaDown', 'MeshletCaRefusing', 'MeshletCaRootExpiring']) assert.ok(names.includes(want), want);
      const exported = new Set([
        ...(await new MeshMetrics().registry.getMetricsAsJSON()),
        ...(await new CaMetrics(() => ({ trustBundlePem: '', signingFingerprint: '' })).registry.getMetricsAsJSON()),
      ].map((m) => m.name));
      const used = new Set(exprs.flatMap((e) => [...e.matchAll(/\b(meshlet_[a-z_]+|process_[a-z_]+)/g)].map((m) => m[1]!.replace(/_(bucket|count|sum)$/, ''))));
      assert.ok(used.size >= 8);
      for (const m of used) assert.ok(exported.has(m), `${m} is used by an alert or the dashboard but not exported`);
      for (const p of dashboard.panels) assert.ok(p.targets.length > 0 && p.title, `panel ${p.id}`);
    });

    it('lets the dashboard narrow every panel to nodes, or to namespaces and workloads', () => {
      const vars = dashboard.templating.list.map((v: any) => v.name);
      for (const want of ['node', 'namespace', 'workload']) assert.ok(vars.includes(want), `no ${want} variable`);
      for (const p of dashboard.panels) {
        for (const t of p.targets) assert.match(t.expr, /node=~"\$node"|destination_workload=~"\$workload"/, `panel ${p.id} ignores the variables: ${t.expr}`);
      }
      // The node label the variable reads is the PodMonitor's relabeling of the pod's node.
      const relabel = find('PodMonitor', 'meshlet-agent').spec.podMetricsEndpoints[0].relabelings;
      assert.ok(relabel.some((r: any) => r.sourceLabels.includes('__meta_kubernetes_pod_node_name') && r.targetLabel === 'node'));
    });
  });

  it('has an example namespace opted in, with a pod that opts out', () => {
    const ns = examples.find((o) => o.kind === 'Namespace')!;
    assert.equal(ns.metadata.annotations['meshlet.dev/capture'], 'enabled');
    assert.ok(examples.some((o) => o.kind === 'Pod' && o.metadata.annotations?.['meshlet.dev/capture'] === 'disabled'));
  });
});

/** What the downward API gives a container as MESHLET_MEMORY_TARGET: its memory limit in MiB. */
function limitMiB(container: any): string {
  const ref = container.env.find((e: any) => e.name === 'MESHLET_MEMORY_TARGET')?.valueFrom?.resourceFieldRef;
  assert.deepEqual(ref, { resource: 'limits.memory', divisor: '1Mi' });
  const limit = String(container.resources.limits.memory);
  assert.match(limit, /^[0-9]+Mi$/);
  return limit.slice(0, -2);
}
