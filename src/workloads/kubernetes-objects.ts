// Kubernetes objects as the workload source keeps them: trimmed to the fields meshlet reads before
// the informers cache them (what keeps memory per pod low), and the annotations that opt in.
import { isIPv4 } from 'node:net';
import { MIRROR_ANNOTATION } from '../kube/config.ts';
import { schemaProblems } from '../policy/schema.ts';

export const CAPTURE_ANNOTATION = 'meshlet.dev/capture';
export const MTLS_ANNOTATION = 'meshlet.dev/mtls';
export const MESH_POLICY = { group: 'meshlet.dev', version: 'v1alpha1', plural: 'meshpolicies' } as const;
/** Pods the agent never needs: host-network pods share the node's IP, finished pods lost theirs. */
export const POD_FIELD_SELECTOR = 'spec.hostNetwork=false,status.phase!=Succeeded,status.phase!=Failed';

/** The fields of a Pod meshlet reads; everything else is dropped before caching. */
export interface SlimPod {
  metadata: {
    name: string; namespace: string; uid?: string; resourceVersion?: string;
    labels?: Record<string, string>; annotations?: Record<string, string>;
    creationTimestamp?: string; deletionTimestamp?: string;
    /** The controlling owner only (kind and name). */
    owner?: { kind: string; name: string };
    /** A mirror pod: the API's copy of a kubelet's static pod (`kubernetes.io/config.mirror`). */
    mirror?: boolean;
  };
  spec: { nodeName?: string; serviceAccountName?: string; hostNetwork?: boolean };
  status: { phase?: string; podIP?: string; podIPs?: Array<{ ip: string }>; hostIP?: string };
}

export interface SlimNamespace {
  metadata: { name: string; uid?: string; resourceVersion?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
}

export interface SlimNode {
  metadata: { name: string; uid?: string; resourceVersion?: string };
  /** The IPv4 ranges the node's pods get their addresses from, when the cluster assigns them. */
  spec: { podCIDRs?: string[] };
}

export interface SlimPolicy {
  metadata: { name: string; namespace: string; uid?: string; resourceVersion?: string; generation?: number };
  spec: Record<string, unknown>;
  problems?: string[];
}

export interface SlimService {
  metadata: { name: string; namespace: string; uid?: string; resourceVersion?: string };
  spec: { type?: string; clusterIP?: string; ports: Array<{ name: string; port: number; protocol: string }>; trafficDistribution?: string };
}

export interface SlimEndpointSlice {
  metadata: { name: string; namespace: string; uid?: string; resourceVersion?: string; serviceName?: string };
  addressType?: string;
  endpoints: Array<{ address?: string; ready: boolean; nodeName?: string }>;
  ports: Array<{ name: string; port?: number; protocol: string }>;
}

/** Only meshlet's own annotations are kept (others, like last-applied-configuration, can be large). */
function meshletAnnotations(a: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!a) return undefined;
  let out: Record<string, string> | undefined;
  for (const [k, v] of Object.entries(a)) if (k.startsWith('meshlet.dev/')) (out ??= {})[k] = v;
  return out;
}

function dateText(d: unknown): string | undefined {
  if (d === undefined || d === null) return undefined;
  return d instanceof Date ? d.toISOString() : String(d);
}

export function slimPod(o: any): SlimPod {
  const m = o?.metadata ?? {};
  const s = o?.spec ?? {};
  const st = o?.status ?? {};
  return {
    metadata: {
      name: m.name, namespace: m.namespace, uid: m.uid, resourceVersion: m.resourceVersion,
      labels: m.labels, annotations: meshletAnnotations(m.annotations),
      creationTimestamp: dateText(m.creationTimestamp), deletionTimestamp: dateText(m.deletionTimestamp),
      owner: controller(m.ownerReferences),
      ...(m.annotations?.[MIRROR_ANNOTATION] !== undefined ? { mirror: true } : {}),
    },
    spec: { nodeName: s.nodeName, serviceAccountName: s.serviceAccountName, hostNetwork: s.hostNetwork },
    status: { phase: st.phase, podIP: st.podIP, podIPs: Array.isArray(st.podIPs) ? st.podIPs.map((p: any) => ({ ip: p.ip })) : undefined, hostIP: st.hostIP },
  };
}

/**
 * A Pod as the address controller keeps it: a remote agent's entry needs no labels (policy is
 * decided at the destination, from its own node's Pods), so only the one that names the workload
 * stays (bench/README.md, "Address slices at scale").
 */
export function addressPod(o: any): SlimPod {
  const pod = slimPod(o);
  const hash = pod.metadata.labels?.['pod-template-hash'];
  pod.metadata.labels = hash !== undefined ? { 'pod-template-hash': hash } : undefined;
  return pod;
}

function controller(refs: unknown): { kind: string; name: string } | undefined {
  if (!Array.isArray(refs)) return undefined;
  const c = refs.find((r) => r?.controller === true);
  return c && typeof c.kind === 'string' && typeof c.name === 'string' ? { kind: c.kind, name: c.name } : undefined;
}

/**
 * The workload a pod belongs to, as Istio names it: a ReplicaSet's pods belong to its Deployment
 * (the ReplicaSet name minus the pod-template-hash), other controllers' pods to the controller,
 * and a bare pod to itself.
 */
export function workloadName(pod: SlimPod): string {
  const owner = pod.metadata.owner;
  if (!owner) return pod.metadata.name;
  const hash = pod.metadata.labels?.['pod-template-hash'];
  if (owner.kind === 'ReplicaSet' && hash && owner.name.endsWith(`-${hash}`)) return owner.name.slice(0, -hash.length - 1);
  return owner.name;
}

export function slimNamespace(o: any): SlimNamespace {
  const m = o?.metadata ?? {};
  return { metadata: { name: m.name, uid: m.uid, resourceVersion: m.resourceVersion, labels: m.labels, annotations: meshletAnnotations(m.annotations) } };
}

export function slimNode(o: any): SlimNode {
  const m = o?.metadata ?? {};
  const cidrs: unknown = o?.spec?.podCIDRs ?? (o?.spec?.podCIDR ? [o.spec.podCIDR] : undefined);
  const v4 = Array.isArray(cidrs) ? cidrs.filter((c): c is string => typeof c === 'string' && isIPv4(c.split('/')[0] ?? '')) : [];
  return { metadata: { name: m.name, uid: m.uid, resourceVersion: m.resourceVersion }, spec: v4.length > 0 ? { podCIDRs: v4 } : {} };
}

export function slimPolicy(o: any): SlimPolicy {
  const m = o?.metadata ?? {};
  const spec = o?.spec ?? {};
  // Checked once per change of the object, not per snapshot: the apiserver checked the CRD's schema
  // too, but not unknown fields, which would otherwise be ignored.
  const problems = schemaProblems(spec, 'spec');
  return { metadata: { name: m.name, namespace: m.namespace, uid: m.uid, resourceVersion: m.resourceVersion, generation: m.generation }, spec, ...(problems.length > 0 ? { problems } : {}) };
}

export function slimService(o: any): SlimService {
  const m = o?.metadata ?? {};
  const s = o?.spec ?? {};
  return {
    metadata: { name: m.name, namespace: m.namespace, uid: m.uid, resourceVersion: m.resourceVersion },
    spec: {
      type: s.type, clusterIP: s.clusterIP, trafficDistribution: s.trafficDistribution,
      ports: Array.isArray(s.ports) ? s.ports.map((p: any) => ({ name: p?.name ?? '', port: p?.port, protocol: p?.protocol ?? 'TCP' })) : [],
    },
  };
}

export function slimEndpointSlice(o: any): SlimEndpointSlice {
  const m = o?.metadata ?? {};
  return {
    metadata: { name: m.name, namespace: m.namespace, uid: m.uid, resourceVersion: m.resourceVersion, serviceName: m.labels?.['kubernetes.io/service-name'] },
    addressType: o?.addressType,
    endpoints: Array.isArray(o?.endpoints) ? o.endpoints.map((e: any) => ({
      address: Array.isArray(e?.addresses) ? e.addresses[0] : undefined,
      // The API says: a nil "ready" means ready.
      ready: e?.conditions?.ready !== false,
      nodeName: e?.nodeName,
    })) : [],
    ports: Array.isArray(o?.ports) ? o.ports.map((p: any) => ({ name: p?.name ?? '', port: p?.port, protocol: p?.protocol ?? 'TCP' })) : [],
  };
}

/**
 * Services with a cluster IP and their endpoints from EndpointSlices (the controller's, or ones a
 * user manages for a Service without selector; both carry `kubernetes.io/service-name`). A Service
 * port and a slice port match by name; the slice's port number is the resolved targetPort of its
 * endpoints. An address in several slices (during a rollout) is one endpoint, ready if any says so.
 * Headless Services (clusterIP None) and ExternalName are left out: clients use pod IPs or DNS.
 */
