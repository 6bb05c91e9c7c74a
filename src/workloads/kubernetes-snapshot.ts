// The cluster's trimmed objects folded into one MeshSnapshot: which pods are in the mesh and by which
// address, Services with their endpoints, mTLS modes and policies (kubernetes.ts says the rules).
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import type { AddressRefusal, MeshNode, MeshPolicyObject, MeshService, MeshSnapshot, MtlsMode, ServiceEndpoint, Workload } from './model.ts';
import { workloadSpiffeId } from './model.ts';
import { ipv4Ranges } from './registry.ts';
import {
  CAPTURE_ANNOTATION, MTLS_ANNOTATION, type SlimEndpointSlice, type SlimNamespace, type SlimNode, type SlimPod, type SlimPolicy, type SlimService, workloadName,
} from './kubernetes-objects.ts';

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

/** `a.b.c.d/n` with the host bits cleared (as ipset and nft print it), or undefined when it is not IPv4 CIDR. */
export function canonicalRange(cidr: string): string | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(\d{1,2})$/.exec(cidr.trim());
  if (!m) return undefined;
  const octets = m.slice(1, 5).map(Number);
  const bits = Number(m[5]);
  if (octets.some((o) => o > 255) || bits > 32) return undefined;
  const value = octets.reduce((v, o) => v * 256 + o, 0);
  const size = 2 ** (32 - bits);
  const base = value - (value % size);
  return `${[24, 16, 8, 0].map((sh) => Math.floor(base / 2 ** sh) % 256).join('.')}/${bits}`;
}

/** Every node's IPv4 pod ranges, canonical, sorted, each once. */
export function clusterPodRanges(nodes: Iterable<SlimNode>): string[] {
  return canonicalRanges([...nodes].flatMap((n) => n.spec.podCIDRs ?? []));
}

/** IPv4 CIDRs canonical, sorted, each once; anything else left out. */
export function canonicalRanges(cidrs: Iterable<string>): string[] {
  const out = new Set<string>();
  for (const c of cidrs) { const r = canonicalRange(c); if (r) out.add(r); }
  return [...out].sort();
}

const rangesOf = new WeakMap<SlimNode, BlockList>();
function podRanges(node: SlimNode): BlockList {
  let list = rangesOf.get(node);
  if (!list) rangesOf.set(node, list = ipv4Ranges(node.spec.podCIDRs ?? []));
  return list;
}

/** Membership and address checks per pod object, kept while its namespace and node objects are the same. */
const checks = new WeakMap<SlimPod, { ns: SlimNamespace | undefined; node: SlimNode | undefined; m: ReturnType<typeof meshMembership>; why: AddressRefusal['reason'] | undefined }>();
function checked(pod: SlimPod, ns: SlimNamespace | undefined, node: SlimNode | undefined): { m: ReturnType<typeof meshMembership>; why: AddressRefusal['reason'] | undefined } {
  const held = checks.get(pod);
  if (held && held.ns === ns && held.node === node) return held;
  const m = meshMembership(pod, ns);
  const c = { ns, node, m, why: m.meshed ? addressRefusal(pod, m.ip, node) : undefined };
  checks.set(pod, c);
  return c;
}

/** `namespace/name` of a workload, made once per workload object (the holders map is rebuilt per snapshot). */
const keys = new WeakMap<Workload, string>();
export function holderKey(w: Workload): string {
  let k = keys.get(w);
  if (k === undefined) keys.set(w, k = `${w.namespace}/${w.name}`);
  return k;
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
  // Each address's pod; its workload is workloadOf's. No object per pod per build: at 150,000 pods
  // a build is most of what a change costs (bench/README.md, "What knowing the cluster costs").
  const byIp = new Map<string, SlimPod>();
  const nodes = new Map<string, MeshNode>();
  const refused: AddressRefusal[] = [];
  for (const pod of pods) {
    const node = pod.spec.nodeName as string;
    const { m, why } = checked(pod, namespaces.get(pod.metadata.namespace), ctx.nodes?.get(node));
    if (!m.meshed) continue;
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
    if (!held) byIp.set(m.ip, pod);
    else if (held.spec.nodeName === node || !live(held) || !live(pod)) {
      if (prefer(pod, held)) byIp.set(m.ip, pod);
    } else {
      // Two live pods on two nodes: one of them lies about its address. It stays with its holder.
      const keep = keeps(held, pod, ctx.holders?.get(m.ip)) ? held : pod;
      const lose = keep === held ? pod : held;
      byIp.set(m.ip, keep);
      refused.push({ pod: podKey(lose), node: lose.spec.nodeName as string, ip: m.ip, reason: 'address_held_elsewhere', holder: podKey(keep) });
    }
    if (pod.status.hostIP && !nodes.has(w.node)) nodes.set(w.node, { name: w.node, ip: pod.status.hostIP });
  }
  const policyObjects: MeshPolicyObject[] = [];
  for (const p of ctx.policies ?? []) policyObjects.push({ namespace: p.metadata.namespace, name: p.metadata.name, spec: p.spec, ...(p.problems ? { problems: p.problems } : {}) });
  return {
    trustDomain, nodes: [...nodes.values()], workloads: [...byIp.values()].map((p) => workloadOf.get(p)!), policies: policyObjects,
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
