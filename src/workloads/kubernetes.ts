// The Kubernetes workload source: @kubernetes/client-node informers (ListWatch) on Pods, Namespaces,
// Nodes, Services, EndpointSlices and MeshPolicies (when the CRD is installed), folded into one
// MeshSnapshot.
//
// - A pod is in the mesh when its namespace has `meshlet.dev/capture: enabled`, the pod does not say
//   `meshlet.dev/capture: disabled`, it is not hostNetwork, it has an IPv4 address and has not
//   finished; a dual-stack pod's IPv6 address is kept too, for the IPv6 guard. Its address must be
//   believable (addressRefusal, buildSnapshot): not a mirror pod, a service account, inside its
//   node's podCIDRs, not held by a live pod on another node. The registry holds
//   every mesh pod of the cluster (destinations on other nodes need their identity and node), the
//   agent captures the ones on its own node.
// - Watch only what is needed: the pod watch carries a field selector that leaves out hostNetwork
//   pods and finished pods on the apiserver side; objects are trimmed to the fields meshlet reads
//   before the informer caches them (client-go's SetTransform), which is what keeps memory per pod low.
// - Lists are paged (limit/continue) so a 10,000-pod cluster is not one giant response.
// - A broken watch resumes from the last resourceVersion; 410 Gone re-lists. Either way the informer
//   keeps its objects, so the registry never goes empty in between. Errors retry with backoff.
// - Nothing is published until every informer has listed once: the agent is "not ready" until then.
//   MeshPolicy is optional: while its CRD is not installed (404) it counts as synced with no policies,
//   and the source keeps checking for it.
import { backoffMs } from '../backoff.ts';
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import {
  ADD, CoreV1Api, CustomObjectsApi, DELETE, DiscoveryV1Api, ERROR, type KubeConfig, type KubernetesObject, ListWatch, UPDATE, Watch,
} from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { AddressRefusal, MeshNode, MeshPolicyObject, MeshService, MeshSnapshot, MtlsMode, ServiceEndpoint, Workload } from './model.ts';
import { workloadSpiffeId } from './model.ts';
import { schemaProblems } from '../policy/schema.ts';
import type { WorkloadSource } from './source.ts';
import { apiStatus, MIRROR_ANNOTATION } from '../kube-config.ts';

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
export function buildServices(services: readonly SlimService[], slices: readonly SlimEndpointSlice[]): MeshService[] {
  const slicesOf = new Map<string, SlimEndpointSlice[]>();
  for (const sl of slices) {
    if (sl.addressType !== 'IPv4' || !sl.metadata.serviceName) continue;
    const key = `${sl.metadata.namespace}/${sl.metadata.serviceName}`;
    const list = slicesOf.get(key);
    if (list) list.push(sl); else slicesOf.set(key, [sl]);
  }
  const out: MeshService[] = [];
  for (const svc of services) {
    const ip = svc.spec.clusterIP;
    if (svc.spec.type === 'ExternalName' || !ip || ip === 'None' || !isIPv4(ip)) continue;
    const ports = svc.spec.ports.filter((p) => p.protocol === 'TCP' && Number.isInteger(p.port)).map((p) => ({ name: p.name, port: p.port }));
    if (ports.length === 0) continue;
    const byIp = new Map<string, { ip: string; node?: string; ready: boolean; ports: Record<string, number> }>();
    for (const sl of slicesOf.get(`${svc.metadata.namespace}/${svc.metadata.name}`) ?? []) {
      const slicePorts = sl.ports.filter((p) => p.protocol === 'TCP' && p.port !== undefined && ports.some((sp) => sp.name === p.name));
      for (const e of sl.endpoints) {
        if (!e.address || !isIPv4(e.address)) continue;
        let ep = byIp.get(e.address);
        if (!ep) byIp.set(e.address, ep = { ip: e.address, ...(e.nodeName ? { node: e.nodeName } : {}), ready: false, ports: {} });
        ep.ready ||= e.ready;
        for (const p of slicePorts) ep.ports[p.name] = p.port as number;
      }
    }
    const endpoints: ServiceEndpoint[] = [...byIp.values()];
    const td = svc.spec.trafficDistribution;
    out.push({ name: svc.metadata.name, namespace: svc.metadata.namespace, clusterIP: ip, ports, endpoints, preferClose: td === 'PreferClose' || td === 'PreferSameNode' });
  }
  return out;
}

/** The pod's address of one family (podIPs holds at most one of each; podIP is the first), or undefined. */
function podAddress(pod: SlimPod, isFamily: (ip: string) => boolean): string | undefined {
  for (const { ip } of pod.status.podIPs ?? []) if (isFamily(ip)) return ip;
  return pod.status.podIP && isFamily(pod.status.podIP) ? pod.status.podIP : undefined;
}

/** Why a pod is or is not in the mesh (the config dump and tests read the reason). */
export function meshMembership(pod: SlimPod, ns: SlimNamespace | undefined): { meshed: true; ip: string } | { meshed: false; reason: string } {
  if (!ns) return { meshed: false, reason: 'namespace unknown' };
  if (ns.metadata.annotations?.[CAPTURE_ANNOTATION] !== 'enabled') return { meshed: false, reason: 'namespace not opted in' };
  if (pod.metadata.annotations?.[CAPTURE_ANNOTATION] === 'disabled') return { meshed: false, reason: 'pod opted out' };
  if (pod.spec.hostNetwork) return { meshed: false, reason: 'hostNetwork' };
  if (pod.status.phase === 'Succeeded' || pod.status.phase === 'Failed') return { meshed: false, reason: `phase ${pod.status.phase}` };
  if (!pod.spec.nodeName) return { meshed: false, reason: 'not scheduled' };
  const ip = podAddress(pod, isIPv4);
  if (!ip) return { meshed: false, reason: 'no IPv4 address yet' };
  return { meshed: true, ip };
}

// Workload objects are cached per pod object: the informer replaces the object on every change, so
// a rebuild after one event allocates one new Workload, not one per pod in the cluster.
const workloadOf = new WeakMap<SlimPod, Workload>();

/**
 * Why an opted-in pod's address is not believed, or undefined. Identity is the address, and a
 * compromised kubelet writes its own pods' status: a mirror pod (created by the kubelet, in any
 * namespace, with no service account) or a pod without a service account is never an identity, and
 * where the node has podCIDRs an address outside them is not the pod's.
 */
export function addressRefusal(pod: SlimPod, ip: string, node: SlimNode | undefined): AddressRefusal['reason'] | undefined {
  if (pod.metadata.mirror) return 'mirror_pod';
  if (!pod.spec.serviceAccountName) return 'no_service_account';
  const cidrs = node?.spec.podCIDRs;
  if (cidrs && !podRanges(node).check(ip, 'ipv4')) return 'outside_pod_cidrs';
  return undefined;
}

const rangesOf = new WeakMap<SlimNode, BlockList>();
function podRanges(node: SlimNode): BlockList {
  let list = rangesOf.get(node);
  if (!list) {
    list = new BlockList();
    for (const cidr of node.spec.podCIDRs ?? []) {
      const [net, bits] = cidr.split('/');
      if (net && bits !== undefined) list.addSubnet(net, Number(bits), 'ipv4');
    }
    rangesOf.set(node, list);
  }
  return list;
}

/** What buildSnapshot may know besides pods and namespaces. */
export interface SnapshotContext {
  policies?: Iterable<SlimPolicy>;
  services?: readonly MeshService[];
  /** Nodes by name, for their podCIDRs. */
  nodes?: ReadonlyMap<string, SlimNode>;
  /** Who held each address in the previous snapshot (`namespace/name`): a live holder keeps it. */
  holders?: ReadonlyMap<string, string>;
}

const podKey = (p: SlimPod) => `${p.metadata.namespace}/${p.metadata.name}`;
const live = (p: SlimPod) => !p.metadata.deletionTimestamp;

/**
 * Folds the informers' caches into a snapshot. An address goes to at most one pod: on one node, to
 * the live, newer pod (the node's CNI reused it); across nodes, never away from a live pod that
 * holds it (the one that held it in the previous snapshot, else the older one): every such
 * conflict, and every refused address, is in `refused`.
 */
export function buildSnapshot(trustDomain: string, pods: Iterable<SlimPod>, namespaces: ReadonlyMap<string, SlimNamespace>, ctx: SnapshotContext = {}): MeshSnapshot {
  const byIp = new Map<string, { pod: SlimPod; w: Workload }>();
  const nodes = new Map<string, MeshNode>();
  const refused: AddressRefusal[] = [];
  for (const pod of pods) {
    const m = meshMembership(pod, namespaces.get(pod.metadata.namespace));
    if (!m.meshed) continue;
    const node = pod.spec.nodeName as string;
    const why = addressRefusal(pod, m.ip, ctx.nodes?.get(node));
    if (why) {
      refused.push({ pod: podKey(pod), node, ip: m.ip, reason: why });
      continue;
    }
    let w = workloadOf.get(pod);
    if (!w) {
      const serviceAccount = pod.spec.serviceAccountName as string;
      // A dual-stack pod's IPv6 address: the IPv6 guard refuses it (the mesh carries IPv4).
      const ipv6 = podAddress(pod, isIPv6);
      w = {
        name: pod.metadata.name, namespace: pod.metadata.namespace, serviceAccount, ip: m.ip, ...(ipv6 ? { ipv6 } : {}),
        node, captured: true, spiffeId: workloadSpiffeId(trustDomain, pod.metadata.namespace, serviceAccount),
        labels: pod.metadata.labels ?? {}, workload: workloadName(pod),
      };
      workloadOf.set(pod, w);
    }
    const held = byIp.get(m.ip);
    if (!held) byIp.set(m.ip, { pod, w });
    else if (held.w.node === node || !live(held.pod) || !live(pod)) {
      if (prefer(pod, held.pod)) byIp.set(m.ip, { pod, w });
    } else {
      // Two live pods on two nodes: one of them lies about its address. It stays with its holder.
      const keep = keeps(held.pod, pod, ctx.holders?.get(m.ip)) ? held : { pod, w };
      const lose = keep === held ? pod : held.pod;
      byIp.set(m.ip, keep);
      refused.push({ pod: podKey(lose), node: lose.spec.nodeName as string, ip: m.ip, reason: 'address_held_elsewhere', holder: podKey(keep.pod) });
    }
    if (pod.status.hostIP && !nodes.has(w.node)) nodes.set(w.node, { name: w.node, ip: pod.status.hostIP });
  }
  const policyObjects: MeshPolicyObject[] = [];
  for (const p of ctx.policies ?? []) policyObjects.push({ namespace: p.metadata.namespace, name: p.metadata.name, spec: p.spec, ...(p.problems ? { problems: p.problems } : {}) });
  return {
    trustDomain, nodes: [...nodes.values()], workloads: [...byIp.values()].map((e) => e.w), policies: policyObjects,
    mtls: mtlsModes(namespaces), services: ctx.services ?? [], ...(refused.length > 0 ? { refused } : {}),
  };
}

/** Whether `a` (holding the address so far in this build) keeps it against `b`, both live on two nodes. */
function keeps(a: SlimPod, b: SlimPod, previous: string | undefined): boolean {
  if (previous === podKey(a)) return true;
  if (previous === podKey(b)) return false;
  const ca = a.metadata.creationTimestamp ?? '';
  const cb = b.metadata.creationTimestamp ?? '';
  return ca !== cb ? ca < cb : podKey(a) < podKey(b);
}

/** `meshlet.dev/mtls` per namespace. A value other than strict or permissive counts as strict: a typo
 *  must not open a namespace to plaintext. */
export function mtlsModes(namespaces: ReadonlyMap<string, SlimNamespace>): Record<string, MtlsMode> {
  const modes: Record<string, MtlsMode> = {};
  for (const [name, ns] of namespaces) {
    const v = ns.metadata.annotations?.[MTLS_ANNOTATION];
    if (v !== undefined) modes[name] = v === 'permissive' ? 'permissive' : 'strict';
  }
  return modes;
}

function prefer(a: SlimPod, b: SlimPod): boolean {
  const aLive = !a.metadata.deletionTimestamp;
  const bLive = !b.metadata.deletionTimestamp;
  if (aLive !== bLive) return aLive;
  return (a.metadata.creationTimestamp ?? '') > (b.metadata.creationTimestamp ?? '');
}

/** Asks for BOOKMARKs (they keep the resourceVersion fresh on quiet resources, so a resumed watch
 *  is not 410) and trims every watched object before the informer caches it. */
class TrimmingWatch extends Watch {
  readonly #trim: (o: unknown) => unknown;
  constructor(kc: KubeConfig, trim: (o: unknown) => unknown) {
    super(kc);
    this.#trim = trim;
  }
  override watch(path: string, query: Record<string, unknown>, cb: (phase: string, obj: any, raw: any) => void, done: (err: any) => void): Promise<AbortController> {
    return super.watch(path, { ...query, allowWatchBookmarks: true }, (phase, obj, raw) => {
      cb(phase, phase === 'ADDED' || phase === 'MODIFIED' || phase === 'DELETED' ? this.#trim(obj) : obj, raw);
    }, done);
  }
}

export interface KubernetesSourceOptions {
  kubeConfig: KubeConfig;
  trustDomain: string;
  log: Logger;
  /** Events arriving within this window become one snapshot. */
  debounceMs?: number;
  /** Items per list page (default 100). */
  pageSize?: number;
  /** Backoff after a failed list or a watch error: doubles from base to max. */
  retryBaseMs?: number;
  retryMaxMs?: number;
}

export interface KubernetesSourceStatus {
  synced: boolean;
  pods: number;
  namespaces: number;
  meshPods: number;
  services: number;
  endpointSlices: number;
  nodes: number;
  lastError?: string;
  policies: number | 'crd-not-installed';
  /** Completed lists (the first sync and every re-list after 410 Gone). */
  lists: number;
  /** Where each informer would resume its watch (advanced by events and bookmarks). */
  resourceVersions: Record<string, string>;
}

export interface KubernetesSource extends WorkloadSource {
  status(): KubernetesSourceStatus;
}

interface Informer {
  name: string;
  lw: ListWatch<KubernetesObject>;
  listed: boolean;
  /** An optional resource whose API is not installed (404): synced, empty. */
  optional?: boolean;
  absent?: boolean;
  /** Failed list/watch attempts in a row (the retry pace: backoff.ts). */
  failures: number;
  retryTimer?: NodeJS.Timeout;
}

export function createKubernetesSource(opts: KubernetesSourceOptions): KubernetesSource {
  const log = opts.log.child({ component: 'kubernetes-source' });
  const kc = opts.kubeConfig;
  const core = kc.makeApiClient(CoreV1Api);
  // Small pages keep the peak low: each page is parsed and deserialized whole before it is trimmed,
  // and V8 keeps the heap it grew for the largest one (bench/README.md, "What knowing the cluster
  // costs": page size against RSS).
  const pageSize = opts.pageSize ?? 100;
  const base = opts.retryBaseMs ?? 1000;
  const max = opts.retryMaxMs ?? 30_000;
  let stopped = false;
  let debounce: NodeJS.Timeout | undefined;
  let lastError: string | undefined;
  let lists = 0;
  let meshPods = 0;
  let handlers: Parameters<WorkloadSource['start']>[0] | undefined;
  type Page = (cont: string | undefined) => Promise<{ metadata?: { resourceVersion?: string; _continue?: string; continue?: string }; items: unknown[] }>;

  /** Pages through a list; every page is served from the first page's snapshot (one resourceVersion). */
  async function pagedList(name: string, page: Page, trim: (o: unknown) => unknown) {
    const items: unknown[] = [];
    let cont: string | undefined;
    let resourceVersion: string | undefined;
    do {
      const r = await page(cont);
      resourceVersion ??= r.metadata?.resourceVersion;
      for (const o of r.items) items.push(trim(o));
      // Typed lists deserialize `continue` as `_continue`; custom-object lists are raw JSON.
      cont = r.metadata?._continue || r.metadata?.continue || undefined;
    } while (cont);
    lists += 1;
    log.info({ resource: name, items: items.length, resourceVersion }, 'listed');
    return { metadata: { resourceVersion }, items };
  }

  /** One informer: paged, trimmed lists; trimmed watches; a list opens its part of the first-sync gate. */
  const informer = (name: string, path: string, trim: (o: unknown) => unknown, page: Page, extra: { fieldSelector?: string; optional?: boolean } = {}): Informer => {
    const inf: Informer = {
      name, listed: false, failures: 0, ...(extra.optional ? { optional: true } : {}),
      lw: new ListWatch<KubernetesObject>(path, new TrimmingWatch(kc, trim), async () => {
        const list = await pagedList(name, page, trim);
        if (inf.absent) log.info({ resource: name }, 'the API is installed now: watching it');
        inf.listed = true;
        inf.absent = false;
        // An empty list fires no events, yet it may be the one that opens the first-sync gate.
        changed();
        return list as any;
      }, false, undefined, extra.fieldSelector),
    };
    return inf;
  };
  const custom = kc.makeApiClient(CustomObjectsApi);
  const pods = informer('pods', '/api/v1/pods', slimPod,
    (cont) => core.listPodForAllNamespaces({ fieldSelector: POD_FIELD_SELECTOR, limit: pageSize, _continue: cont }), { fieldSelector: POD_FIELD_SELECTOR });
  const namespaces = informer('namespaces', '/api/v1/namespaces', slimNamespace, (cont) => core.listNamespace({ limit: pageSize, _continue: cont }));
  const policies = informer('meshpolicies', `/apis/${MESH_POLICY.group}/${MESH_POLICY.version}/${MESH_POLICY.plural}`, slimPolicy,
    (cont) => custom.listClusterCustomObject({ ...MESH_POLICY, limit: pageSize, _continue: cont }), { optional: true });
  const discovery = kc.makeApiClient(DiscoveryV1Api);
  const services = informer('services', '/api/v1/services', slimService, (cont) => core.listServiceForAllNamespaces({ limit: pageSize, _continue: cont }));
  const slices = informer('endpointslices', '/apis/discovery.k8s.io/v1/endpointslices', slimEndpointSlice,
    (cont) => discovery.listEndpointSliceForAllNamespaces({ limit: pageSize, _continue: cont }));
  // Nodes for their podCIDRs: an address outside its node's ranges is not the pod's.
  const nodes = informer('nodes', '/api/v1/nodes', slimNode, (cont) => core.listNode({ limit: pageSize, _continue: cont }));
  const informers = [pods, namespaces, policies, services, slices, nodes];
  /** Each address's pod in the last snapshot (a live holder keeps it), and the refusals logged so far. */
  let holders = new Map<string, string>();
  let logged = new Set<string>();
  const synced = () => informers.every((i) => i.listed || i.absent);

  const publish = () => {
    debounce = undefined;
    if (stopped || !synced()) return;
    const nsMap = new Map<string, SlimNamespace>();
    for (const ns of namespaces.lw.list() as unknown as SlimNamespace[]) nsMap.set(ns.metadata.name, ns);
    const nodeMap = new Map<string, SlimNode>();
    for (const n of nodes.lw.list() as unknown as SlimNode[]) nodeMap.set(n.metadata.name, n);
    const snapshot = buildSnapshot(opts.trustDomain, pods.lw.list() as unknown as SlimPod[], nsMap, {
      policies: policies.absent ? [] : policies.lw.list() as unknown as SlimPolicy[],
      services: buildServices(services.lw.list() as unknown as SlimService[], slices.lw.list() as unknown as SlimEndpointSlice[]),
      nodes: nodeMap, holders,
    });
    holders = new Map(snapshot.workloads.map((w) => [w.ip, `${w.namespace}/${w.name}`]));
    logged = logRefusals(log, snapshot.refused ?? [], logged);
    meshPods = snapshot.workloads.length;
    handlers?.onSnapshot(snapshot);
  };
  const changed = () => {
    // Coalesce: a re-list or a namespace flip produces many events and one snapshot.
    if (!debounce && !stopped) debounce = setTimeout(publish, opts.debounceMs ?? 20);
  };

  const retry = (inf: Informer, ms: number) => {
    inf.retryTimer = setTimeout(() => { inf.retryTimer = undefined; if (!stopped) void inf.lw.start(); }, ms);
  };
  for (const inf of informers) {
    for (const verb of [ADD, UPDATE, DELETE] as const) inf.lw.on(verb, () => { inf.failures = 0; changed(); });
    inf.lw.on(ERROR, (err: unknown) => {
      if (stopped) return;
      if (inf.optional && apiStatus(err) === 404) {
        // Not an error: the CRD is simply not installed. Look again at the slowest retry pace.
        if (!inf.absent) log.info({ resource: inf.name }, 'MeshPolicy CRD is not installed: no policies until it is');
        inf.absent = true;
        inf.listed = false;
        changed();
        retry(inf, max);
        return;
      }
      const why = describe(err);
      lastError = `${inf.name}: ${why}`;
      inf.failures++;
      const retryInMs = backoffMs(inf.failures, base, max);
      log.warn({ resource: inf.name, err: why, retryInMs }, 'list/watch failed; known objects stay in force, retrying');
      retry(inf, retryInMs);
    });
  }

  return {
    async start(h) {
      handlers = h;
      // start() resolves once the first watch is open, or after a failed list (then it retries).
      await Promise.all(informers.map((i) => i.lw.start()));
      changed();
    },
    async close() {
      stopped = true;
      if (debounce) clearTimeout(debounce);
      for (const i of informers) {
        if (i.retryTimer) clearTimeout(i.retryTimer);
        await i.lw.stop();
      }
    },
    status() {
      return {
        synced: synced(), pods: pods.lw.list().length, namespaces: namespaces.lw.list().length,
        services: services.lw.list().length, endpointSlices: slices.lw.list().length, nodes: nodes.lw.list().length,
        policies: policies.absent ? 'crd-not-installed' : policies.lw.list().length,
        meshPods, lists, resourceVersions: Object.fromEntries(informers.map((i) => [i.name, i.lw.latestResourceVersion()])),
        ...(lastError ? { lastError } : {}),
      };
    },
  };
}

/** Logs each refusal once while it lasts; returns the keys of the current ones. */
function logRefusals(log: Logger, refused: readonly AddressRefusal[], before: ReadonlySet<string>): Set<string> {
  const now = new Set<string>();
  for (const r of refused) {
    const key = `${r.pod}|${r.ip}|${r.reason}`;
    now.add(key);
    if (!before.has(key)) log.warn({ err: 'address_refused', ...r }, 'a pod\'s address was refused: it gets no identity in the mesh');
  }
  return now;
}

function describe(err: unknown): string {
  const code = apiStatus(err);
  const message = (err as { message?: string })?.message ?? String(err);
  return code ? `HTTP ${code}: ${message.split('\n')[0]}` : message.split('\n')[0] ?? message;
}
