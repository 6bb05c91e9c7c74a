// `meshlet check` after install: the whole cluster as an operator sees it through the API (kubectl's
// configuration), not one node. The CRD, the CA and the root it publishes, the agent DaemonSet, and
// for every node whether its agent is ready (ready means capture, sync into every set and every
// local pod's certificate: admin/server.ts) and how many meshed pods depend on it. Reading is one
// function, judging another (pure: the unit tests feed it facts), as for the node checks.
import type { KubeConfig, V1Pod } from '@kubernetes/client-node';
import { X509Certificate } from 'node:crypto';
import { apiStatus } from '../kube/config.ts';
import { PEM_CERTIFICATE } from '../identity/pem.ts';
import { meshMembership } from '../workloads/kubernetes-snapshot.ts';
import { CAPTURE_ANNOTATION, type SlimNamespace, type SlimPod } from '../workloads/kubernetes-objects.ts';
import type { CheckResult } from './node.ts';

/** The names manifests/ installs. */
export const INSTALL = {
  namespace: 'meshlet-system',
  crd: 'meshpolicies.meshlet.dev',
  daemonSet: 'meshlet-agent',
  agentLabel: 'meshlet-agent',
  ca: 'meshlet-ca',
  bundle: 'meshlet-trust-bundle',
  rootSecret: 'meshlet-ca-root',
  bundleKey: 'trust-bundle.pem',
} as const;

/** One permission a component uses: `verb` on `resource` (with its subresource) in `group`, maybe one object's. */
export interface Permission { verb: string; group: string; resource: string; subresource?: string; namespace?: string; name?: string }

const watch = (group: string, resource: string): Permission[] => ['list', 'watch'].map((verb) => ({ verb, group, resource }));
/**
 * What each component calls the API for, kept in step with its code: the agent's informers
 * (workloads/kubernetes.ts) and taint gate (taint-gate.ts); the CA's authorizer, root Secret,
 * bundle ConfigMap (ca/kubernetes.ts) and MeshPolicy status (ca/policy-status.ts).
 */
export const PERMISSIONS: Record<'agent' | 'ca', Permission[]> = {
  agent: [...watch('', 'pods'), ...watch('', 'namespaces'), ...watch('', 'nodes'), ...watch('', 'services'),
    ...watch('discovery.k8s.io', 'endpointslices'), ...watch('meshlet.dev', 'meshpolicies'), { verb: 'patch', group: '', resource: 'nodes' }],
  ca: [{ verb: 'create', group: 'authentication.k8s.io', resource: 'tokenreviews' }, { verb: 'get', group: '', resource: 'pods' }, { verb: 'list', group: '', resource: 'pods' },
    ...watch('meshlet.dev', 'meshpolicies'), { verb: 'patch', group: 'meshlet.dev', resource: 'meshpolicies', subresource: 'status' },
    ...(['get', 'update'] as const).flatMap((verb) => [
      { verb, group: '', resource: 'secrets', namespace: INSTALL.namespace, name: INSTALL.rootSecret },
      { verb, group: '', resource: 'configmaps', namespace: INSTALL.namespace, name: INSTALL.bundle },
    ]), ...['secrets', 'configmaps'].map((resource) => ({ verb: 'create', group: '', resource, namespace: INSTALL.namespace }))],
};

const permissionText = (p: Permission) => `${p.verb} ${p.resource}${p.subresource ? `/${p.subresource}` : ''}${p.group ? `.${p.group}` : ''}${p.name ? ` ${p.name}` : ''}`;

/** A root whose end is nearer than this is a warning: rotation (README) takes a rollout or two. */
const ROOT_WARN_MS = 30 * 24 * 3600_000;

export interface ClusterFacts {
  server: string;
  crd: boolean;
  daemonSet: { desired: number; ready: number; updated: number } | undefined;
  ca: { replicas: number; ready: number } | undefined;
  /** The published roots' ends, or why none could be read. */
  roots: { notAfter: string[] } | { error: string };
  nodes: Array<{ name: string; agent: { pod: string; ready: boolean; reason?: string } | undefined; meshedPods: number }>;
  capturedNamespaces: string[];
  /** Permissions the agent's and the CA's service accounts lack (SubjectAccessReview), or why that could not be asked. */
  rbac: { missing: Array<{ who: 'agent' | 'ca'; permission: string }>; checked: number } | { error: string };
}

const optional = async <T>(read: () => Promise<T>): Promise<T | undefined> => {
  try {
    return await read();
  } catch (err) {
    if (apiStatus(err) === 404) return undefined;
    throw err;
  }
};

function podReady(pod: V1Pod): { ready: boolean; reason?: string } {
  const c = pod.status?.conditions?.find((x) => x.type === 'Ready');
  if (c?.status === 'True') return { ready: true };
  const waiting = pod.status?.containerStatuses?.find((s) => s.state?.waiting)?.state?.waiting?.reason;
  return { ready: false, reason: waiting ?? c?.message ?? pod.status?.phase ?? 'no status' };
}

/** Reads what the checks judge. Throws on an API that cannot be reached or refuses the caller. */
export async function gatherClusterFacts(kc: KubeConfig): Promise<ClusterFacts> {
  const { AppsV1Api, ApiextensionsV1Api, AuthorizationV1Api, CoreV1Api } = await import('@kubernetes/client-node');
  const core = kc.makeApiClient(CoreV1Api);
  const apps = kc.makeApiClient(AppsV1Api);
  const ext = kc.makeApiClient(ApiextensionsV1Api);
  const ns = INSTALL.namespace;
  const [nodes, namespaces, system] = await Promise.all([core.listNode(), core.listNamespace(), core.listNamespacedPod({ namespace: ns })]);
  const crd = await optional(() => ext.readCustomResourceDefinition({ name: INSTALL.crd }));
  const ds = await optional(() => apps.readNamespacedDaemonSet({ name: INSTALL.daemonSet, namespace: ns }));
  const ca = await optional(() => apps.readNamespacedDeployment({ name: INSTALL.ca, namespace: ns }));
  const bundle = await optional(() => core.readNamespacedConfigMap({ name: INSTALL.bundle, namespace: ns }));
  const captured = namespaces.items.filter((n) => n.metadata?.annotations?.[CAPTURE_ANNOTATION] === 'enabled');
  const meshed = new Map<string, number>();
  for (const n of captured) {
    for (const pod of (await core.listNamespacedPod({ namespace: n.metadata!.name! })).items) {
      const m = meshMembership(pod as unknown as SlimPod, n as unknown as SlimNamespace);
      if (m.meshed) meshed.set(pod.spec!.nodeName!, (meshed.get(pod.spec!.nodeName!) ?? 0) + 1);
    }
  }
  const agents = new Map<string, V1Pod>();
  for (const p of system.items) {
    if (p.metadata?.labels?.['app.kubernetes.io/name'] !== INSTALL.agentLabel || !p.spec?.nodeName) continue;
    // During a rollout a node has two: a ready one speaks for it.
    const had = agents.get(p.spec.nodeName);
    if (!had || (!podReady(had).ready && podReady(p).ready)) agents.set(p.spec.nodeName, p);
  }
  return {
    rbac: await reviewPermissions(kc.makeApiClient(AuthorizationV1Api)),
    server: kc.getCurrentCluster()?.server ?? '?',
    crd: crd !== undefined,
    daemonSet: ds && { desired: ds.status?.desiredNumberScheduled ?? 0, ready: ds.status?.numberReady ?? 0, updated: ds.status?.updatedNumberScheduled ?? 0 },
    ca: ca && { replicas: ca.spec?.replicas ?? 1, ready: ca.status?.readyReplicas ?? 0 },
    roots: bundle === undefined ? { error: `no ConfigMap ${INSTALL.bundle}` } : readRoots(bundle.data?.[INSTALL.bundleKey]),
    nodes: nodes.items.map((n) => {
      const name = n.metadata!.name!;
      const pod = agents.get(name);
      return { name, agent: pod && { pod: pod.metadata!.name!, ...podReady(pod) }, meshedPods: meshed.get(name) ?? 0 };
    }),
    capturedNamespaces: captured.map((n) => n.metadata!.name!).sort(),
  };
}

/** Asks the API, as the components' service accounts, for each permission they use. */
async function reviewPermissions(authz: import('@kubernetes/client-node').AuthorizationV1Api): Promise<ClusterFacts['rbac']> {
  const missing: Array<{ who: 'agent' | 'ca'; permission: string }> = [];
  let checked = 0;
  try {
    for (const who of ['agent', 'ca'] as const) {
      const user = `system:serviceaccount:${INSTALL.namespace}:meshlet-${who}`;
      for (const p of PERMISSIONS[who]) {
        const review = await authz.createSubjectAccessReview({ body: {
          spec: { user, groups: ['system:serviceaccounts', `system:serviceaccounts:${INSTALL.namespace}`, 'system:authenticated'], resourceAttributes: p },
        } });
        checked++;
        if (!review.status?.allowed) missing.push({ who, permission: permissionText(p) });
      }
    }
  } catch (err) {
    return { error: apiStatus(err) ? `the API answered ${apiStatus(err)} to a SubjectAccessReview` : (err as Error).message };
  }
  return { missing, checked };
}

function readRoots(pem: string | undefined): ClusterFacts['roots'] {
  const certs = pem?.match(PEM_CERTIFICATE) ?? [];
  if (certs.length === 0) return { error: `${INSTALL.bundleKey} holds no certificate` };
  try {
    return { notAfter: certs.map((c) => new Date(new X509Certificate(c).validTo).toISOString()) };
  } catch (err) {
    return { error: `${INSTALL.bundleKey} does not parse: ${(err as Error).message}` };
  }
}

const APPLY = 'kubectl apply -k manifests/';

export function evaluateCluster(f: ClusterFacts, now: number): CheckResult[] {
  const r: CheckResult[] = [{ name: 'API', level: 'ok', detail: `reachable at ${f.server}` }];
  r.push('error' in f.rbac
    ? { name: 'RBAC', level: 'warn', detail: `not checked: ${f.rbac.error}`, hint: 'checking needs create on subjectaccessreviews (cluster-admin has it)' }
    : f.rbac.missing.length > 0
      ? { name: 'RBAC', level: 'fail', detail: `missing: ${f.rbac.missing.map((m) => `${m.who} cannot ${m.permission}`).join('; ')}`, hint: `${APPLY} (agent-rbac.yaml, ca-rbac.yaml)` }
      : { name: 'RBAC', level: 'ok', detail: `the agent and the CA hold the ${f.rbac.checked} permissions they use` });
  r.push(f.crd
    ? { name: 'CRD', level: 'ok', detail: `${INSTALL.crd} installed` }
    : { name: 'CRD', level: 'fail', detail: `${INSTALL.crd} is not installed: agents cannot watch MeshPolicies`, hint: APPLY });
  r.push(!f.ca ? { name: 'CA', level: 'fail', detail: `no Deployment ${INSTALL.namespace}/${INSTALL.ca}`, hint: APPLY }
    : f.ca.ready === 0 ? { name: 'CA', level: 'fail', detail: `0 of ${f.ca.replicas} replicas ready: no agent can renew a certificate`, hint: `kubectl -n ${INSTALL.namespace} describe deploy ${INSTALL.ca}` }
      : { name: 'CA', level: f.ca.ready < f.ca.replicas ? 'warn' : 'ok', detail: `${f.ca.ready} of ${f.ca.replicas} replicas ready`,
        ...(f.ca.ready < f.ca.replicas ? { hint: `kubectl -n ${INSTALL.namespace} describe deploy ${INSTALL.ca}` } : {}) });
  if ('error' in f.roots) {
    r.push({ name: 'root', level: 'fail', detail: f.roots.error, hint: 'the CA publishes it once it runs; see its log' });
  } else {
    const ends = f.roots.notAfter.map((t) => Date.parse(t));
    const first = Math.min(...ends);
    const days = Math.floor((first - now) / 86_400_000);
    const detail = `${ends.length} in the trust bundle, the first ends ${new Date(first).toISOString()}`;
    r.push(first <= now ? { name: 'root', level: 'fail', detail: `${detail} (expired)`, hint: 'rotate the root (README, "Root rotation")' }
      : first - now < ROOT_WARN_MS ? { name: 'root', level: 'warn', detail: `${detail} (in ${days} days)`, hint: 'rotate the root (README, "Root rotation")' }
        : { name: 'root', level: 'ok', detail });
  }
  const ds = f.daemonSet;
  r.push(!ds ? { name: 'agents', level: 'fail', detail: `no DaemonSet ${INSTALL.namespace}/${INSTALL.daemonSet}`, hint: APPLY }
    : { name: 'agents', level: ds.ready < ds.desired ? 'fail' : ds.updated < ds.desired ? 'warn' : 'ok',
      detail: `${ds.ready} of ${ds.desired} ready, ${ds.updated} updated`,
      ...(ds.ready < ds.desired || ds.updated < ds.desired ? { hint: `kubectl -n ${INSTALL.namespace} rollout status ds/${INSTALL.daemonSet}` } : {}) });
  for (const n of f.nodes) {
    const pods = `${n.meshedPods} meshed pod${n.meshedPods === 1 ? '' : 's'}`;
    const name = `node ${n.name}`;
    if (n.agent?.ready) { r.push({ name, level: 'ok', detail: `agent ${n.agent.pod} ready (capture, sets, certificates); ${pods}` }); continue; }
    const what = n.agent ? `agent ${n.agent.pod} not ready (${n.agent.reason})` : 'no agent pod';
    // Without meshed pods nothing is refused yet, but the next one scheduled there would be.
    r.push({ name, level: n.meshedPods > 0 ? 'fail' : 'warn', detail: `${what}; ${pods}${n.meshedPods > 0 ? ', refused until it is' : ''}`,
      hint: n.agent ? `kubectl -n ${INSTALL.namespace} logs ${n.agent.pod}; meshlet status in it says what it waits for` : 'a taint the DaemonSet does not tolerate, or the node is not schedulable' });
  }
  r.push(f.capturedNamespaces.length > 0
    ? { name: 'captured namespaces', level: 'ok', detail: f.capturedNamespaces.join(', ') }
    : { name: 'captured namespaces', level: 'warn', detail: 'none: nothing is meshed yet', hint: 'kubectl annotate namespace NS meshlet.dev/capture=enabled' });
  return r;
}
