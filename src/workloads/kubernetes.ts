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
import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
// Its informer parts only, not the package's index (kube/load-less.ts).
import { ListWatch } from '@kubernetes/client-node/dist/cache.js';
import { ADD, DELETE, ERROR, UPDATE } from '@kubernetes/client-node/dist/informer.js';
import { Watch } from '@kubernetes/client-node/dist/watch.js';
import type { Logger } from 'pino';
import { apiPath, kubeApi } from '../kube/api.ts';
import { apiStatus } from '../kube/config.ts';
import type { AddressRefusal, MeshSnapshot } from './model.ts';
import type { WorkloadSource } from './source.ts';
import {
  MESH_POLICY, POD_FIELD_SELECTOR, type SlimEndpointSlice, type SlimNamespace, type SlimNode, type SlimPod, type SlimPolicy, type SlimService,
  addressPod, slimEndpointSlice, slimNamespace, slimNode, slimPod, slimPolicy, slimService,
} from './kubernetes-objects.ts';
import { buildServices, buildSnapshot, canonicalRanges, clusterPodRanges, holderKey } from './kubernetes-snapshot.ts';
import { TaintGate } from './taint-gate.ts';
import { ADDRESS_SLICE, type SlimAddressSlice, slimAddressSlice, workloadsFromSlices } from '../addresses/slices.ts';
import { LEASE_NAME, LeaseObserver, type LeaseSighting } from '../addresses/lease.ts';

/** A Watch whose objects are trimmed before the informer caches them (client-go's SetTransform). */
export class TrimmingWatch extends Watch {
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
  /** Pods, namespaces and nodes only: what the address controller publishes (addresses/controller.ts). */
  addressesOnly?: boolean;
  /**
   * Other nodes' pods from the address slices in `namespace` (addresses/slices.ts); Pods are
   * watched for `node` only, in full (policy is decided at the destination, from its own pods).
   */
  remoteFromSlices?: { node: string; namespace: string; lease?: { everyMs: number; staleMs: number }; podRanges?: string[] };
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
  /** With remote pods from address slices: the slices held, and whether their writer keeps them. */
  addressSlices?: number | 'crd-not-installed';
  addressController?: LeaseSighting;
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
  const api = kubeApi(kc);
  // Small pages keep the peak low: each page is parsed whole before it is trimmed,
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
  type Page = { metadata?: { resourceVersion?: string; continue?: string }; items: unknown[] };

  /** Pages through a list; every page is served from the first page's snapshot (one resourceVersion). */
  async function pagedList(name: string, path: string, trim: (o: unknown) => unknown, fieldSelector: string | undefined) {
    const items: unknown[] = [];
    let cont: string | undefined;
    let resourceVersion: string | undefined;
    do {
      const r = await api.get<Page>(path, { fieldSelector, limit: pageSize, continue: cont });
      resourceVersion ??= r.metadata?.resourceVersion;
      for (const o of r.items ?? []) items.push(trim(o));
      cont = r.metadata?.continue || undefined;
    } while (cont);
    lists += 1;
    log.info({ resource: name, items: items.length, resourceVersion }, 'listed');
    return { metadata: { resourceVersion }, items };
  }

  /** One informer: paged, trimmed lists; trimmed watches; a list opens its part of the first-sync gate. */
  const informer = (name: string, path: string, trim: (o: unknown) => unknown, extra: { fieldSelector?: string; optional?: boolean } = {}): Informer => {
    const inf: Informer = {
      name, listed: false, failures: 0, ...(extra.optional ? { optional: true } : {}),
      lw: new ListWatch<KubernetesObject>(path, new TrimmingWatch(kc, trim), async () => {
        const list = await pagedList(name, path, trim, extra.fieldSelector);
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
  const remote = opts.remoteFromSlices;
  const pods = informer('pods', '/api/v1/pods', opts.addressesOnly ? addressPod : slimPod, { fieldSelector: remote ? `${POD_FIELD_SELECTOR},spec.nodeName=${remote.node}` : POD_FIELD_SELECTOR });
  // A malformed slice is logged as it arrives, once per version of the object (list or watch).
  const trimSlice = (o: unknown) => {
    const sl = slimAddressSlice(o);
    if (sl.problems) log.warn({ slice: sl.metadata.name, problems: sl.problems }, 'an address slice holds malformed entries: left out');
    return sl;
  };
  const addressSlices = remote && informer('meshaddressslices', apiPath(ADDRESS_SLICE, { namespace: remote.namespace }), trimSlice, { optional: true });
  // Whether the slices' writer is keeping them: the agent keeps the last table either way, ready.
  const writer = remote && new LeaseObserver({
    api, namespace: remote.namespace, name: LEASE_NAME, ...(remote.lease ?? { everyMs: 30_000, staleMs: 90_000 }),
    onChange: (s) => (s.stale
      ? log.warn({ addressController: s }, 'the address controller is not keeping the slices: serving the last table, new pods elsewhere unknown')
      : log.info({ addressController: s }, 'the address controller keeps the slices')),
  });
  const namespaces = informer('namespaces', '/api/v1/namespaces', slimNamespace);
  const policies = informer('meshpolicies', apiPath(MESH_POLICY), slimPolicy, { optional: true });
  const services = informer('services', '/api/v1/services', slimService);
  const slices = informer('endpointslices', '/apis/discovery.k8s.io/v1/endpointslices', slimEndpointSlice);
  // Nodes for their podCIDRs: an address outside its node's ranges is not the pod's.
  const nodes = informer('nodes', '/api/v1/nodes', slimNode);
  const informers = opts.addressesOnly ? [pods, namespaces, nodes] : [pods, namespaces, policies, services, slices, nodes, ...(addressSlices ? [addressSlices] : [])];
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
    // Namespaced objects one namespace at a time, never ListWatch.list(): it spreads each
    // namespace's objects into push()'s arguments, which overflows the stack past about 120,000 in
    // one namespace (bench/scale.ts, 150,000 pods). An object of a namespace not seen yet waits for it.
    const cached = <T>(inf: Informer) => [...nsMap.keys()].flatMap((ns) => inf.lw.list(ns)) as unknown as T[];
    const snapshot = buildSnapshot(opts.trustDomain, cached<SlimPod>(pods), nsMap, {
      ...(opts.addressesOnly ? {} : {
        policies: policies.absent ? [] : cached<SlimPolicy>(policies),
        services: buildServices(cached<SlimService>(services), cached<SlimEndpointSlice>(slices)),
      }),
      nodes: nodeMap, holders,
    });
    if (remote && addressSlices) {
      const local = new Set(snapshot.workloads.map((w) => w.ip));
      const fromSlices = addressSlices.absent ? [] : addressSlices.lw.list(remote.namespace) as unknown as SlimAddressSlice[];
      snapshot.workloads = [...snapshot.workloads, ...workloadsFromSlices(opts.trustDomain, fromSlices, remote.node, local)];
      // The slices may be behind (or their writer away): an unknown address in these is a pod the
      // table has not heard of yet, which capture still sends to the agent (outbound.ts).
      // The operator's (--pod-range: a CNI with its own IPAM), else the Nodes' podCIDRs.
      snapshot.podRanges = remote.podRanges ? canonicalRanges(remote.podRanges) : clusterPodRanges(nodeMap.values());
    }
    holders = new Map(snapshot.workloads.map((w) => [w.ip, holderKey(w)]));
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
        if (!inf.absent) log.info({ resource: inf.name }, `the ${inf.name} CRD is not installed: none until it is`);
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

  /** How many objects an informer holds, without ListWatch.list() (see publish). */
  const count = (inf: Informer) => (namespaces.lw.list() as unknown as SlimNamespace[]).reduce((n, ns) => n + inf.lw.list(ns.metadata.name).length, 0);
  const gate = new TaintGate({ kubeConfig: kc, log: opts.log });
  return {
    nodeReady: (node) => gate.nodeReady(node),
    addressController: () => writer?.sighting(),
    async start(h) {
      handlers = h;
      // start() resolves once the first watch is open, or after a failed list (then it retries).
      writer?.start();
      await Promise.all(informers.map((i) => i.lw.start()));
      changed();
    },
    async close() {
      stopped = true;
      gate.close();
      writer?.stop();
      if (debounce) clearTimeout(debounce);
      for (const i of informers) {
        if (i.retryTimer) clearTimeout(i.retryTimer);
        await i.lw.stop();
      }
    },
    status() {
      return {
        synced: synced(), pods: count(pods), namespaces: namespaces.lw.list().length,
        services: count(services), endpointSlices: count(slices), nodes: nodes.lw.list().length,
        policies: policies.absent ? 'crd-not-installed' : count(policies),
        ...(addressSlices && remote ? { addressSlices: addressSlices.absent ? 'crd-not-installed' as const : addressSlices.lw.list(remote.namespace).length } : {}),
        ...(writer ? { addressController: writer.sighting() } : {}),
        meshPods, lists, taintGate: gate.phase, resourceVersions: Object.fromEntries(informers.map((i) => [i.name, i.lw.latestResourceVersion()])),
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
