// The mesh's address table as MeshAddressSlice objects: what an agent needs to know about a pod on
// another node, and nothing else. Policy is decided at the destination, from its own node's Pods,
// so an entry carries no labels: addresses, namespace, service account (the SPIFFE identity),
// captured, and the workload name metrics use; the node (where the tunnel goes) is the slice's.
//
// One node's pods per slice (split past SLICE_CAPACITY): every write goes to every agent's watch,
// and a slice is rewritten whole, so its size is what a pod's change costs each node. Slices of
// mixed pods would each be as large as the capacity allows; a node's pods churn together (a
// rollout, a drain) and are few (bench/README.md, "What knowing the cluster costs").
//
// planSlices keeps churn low: an entry stays in its slice while its pod lives, a changed entry is
// rewritten in place, new entries fill slices being written anyway before untouched ones, and a
// slice is deleted only when empty. A controller taking over from another (lease.ts) plans against
// the slices it finds, so a handover with no pod changes writes nothing.
import { createHash } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { type Workload, workloadSpiffeId } from '../workloads/model.ts';

export const ADDRESS_SLICE = { group: 'meshlet.dev', version: 'v1alpha1', plural: 'meshaddressslices', kind: 'MeshAddressSlice' } as const;
/** Entries per slice at most (EndpointSlice's default): a node with more pods gets more slices. */
export const SLICE_CAPACITY = 100;
/** The label every slice the controller writes carries (agents watch the namespace's slices). */
export const MANAGED_BY = { 'app.kubernetes.io/managed-by': 'meshlet-address-controller' } as const;

/** One pod of the mesh, as a remote agent sees it. */
export interface AddressEntry {
  ip: string;
  ipv6?: string;
  namespace: string;
  serviceAccount: string;
  /** Written once per slice, not per entry. */
  node: string;
  captured: boolean;
  workload: string;
}

export interface SliceState {
  name: string;
  node: string;
  /** The object's resourceVersion, so a write never overwrites a change it has not seen. */
  resourceVersion?: string;
  entries: AddressEntry[];
}

export type SliceWrite =
  | { op: 'create'; name: string; node: string; entries: AddressEntry[] }
  | { op: 'update'; name: string; node: string; resourceVersion?: string; entries: AddressEntry[] }
  | { op: 'delete'; name: string; resourceVersion?: string };

/** Entries per workload object: the source keeps a pod's workload while the pod is unchanged. */
const entries = new WeakMap<Workload, AddressEntry>();

export function entryOf(w: Workload): AddressEntry {
  let e = entries.get(w);
  if (!e) {
    e = { ip: w.ip, ...(w.ipv6 ? { ipv6: w.ipv6 } : {}), namespace: w.namespace, serviceAccount: w.serviceAccount, node: w.node, captured: w.captured, workload: w.workload };
    entries.set(w, e);
  }
  return e;
}

/** A new slice's name: the node's (a DNS subdomain already), or its hash when too long, and a random suffix. */
export function sliceName(node: string, suffix: string): string {
  const base = node.length <= 200 ? node : createHash('sha256').update(node).digest('hex').slice(0, 16);
  return `${base}-${suffix}`;
}

export const sameEntry = (a: AddressEntry, b: AddressEntry): boolean => a.ip === b.ip && a.ipv6 === b.ipv6 && a.namespace === b.namespace &&
  a.serviceAccount === b.serviceAccount && a.node === b.node && a.captured === b.captured && a.workload === b.workload;

/**
 * The writes that take `current` to hold exactly `desired` (keyed by IPv4 address), each node's
 * pods in that node's slices. `newName` names a slice to create for a node.
 */
export function planSlices(current: readonly SliceState[], desired: ReadonlyMap<string, AddressEntry>, newName: (node: string) => string, capacity = SLICE_CAPACITY): SliceWrite[] {
  const nodes = new Map<string, { slices: SliceState[]; entries: Map<string, AddressEntry> }>();
  const part = (node: string) => {
    let p = nodes.get(node);
    if (!p) nodes.set(node, p = { slices: [], entries: new Map() });
    return p;
  };
  for (const slice of current) part(slice.node).slices.push(slice);
  for (const e of desired.values()) part(e.node).entries.set(e.ip, e);
  const placed = new Set<string>();
  return [...nodes].flatMap(([node, p]) => planNode(node, p.slices, p.entries, placed, () => newName(node), capacity));
}

function planNode(node: string, current: readonly SliceState[], desired: ReadonlyMap<string, AddressEntry>, placed: Set<string>, newName: () => string, capacity: number): SliceWrite[] {
  const dirty = new Set<string>();
  const next = new Map<string, AddressEntry[]>();
  for (const slice of current) {
    const kept: AddressEntry[] = [];
    for (const e of slice.entries) {
      const want = desired.get(e.ip);
      // Gone (or now on another node), or already in another slice (left by an interrupted write).
      if (!want || placed.has(e.ip)) { dirty.add(slice.name); continue; }
      placed.add(e.ip);
      if (!sameEntry(e, want)) dirty.add(slice.name);
      kept.push(want);
    }
    // A slice over capacity (written by hand, or by a controller with another limit) is left as it is.
    next.set(slice.name, kept);
  }
  const fresh = [...desired.values()].filter((e) => !placed.has(e.ip));
  for (const e of fresh) placed.add(e.ip);
  // Slices being written anyway first, then the others with room, then new ones.
  const order = [...current].sort((a, b) => Number(dirty.has(b.name)) - Number(dirty.has(a.name)));
  for (const slice of order) {
    const entries = next.get(slice.name)!;
    while (fresh.length > 0 && entries.length < capacity) {
      entries.push(fresh.shift()!);
      dirty.add(slice.name);
    }
  }
  const writes: SliceWrite[] = [];
  for (const slice of current) {
    if (!dirty.has(slice.name)) continue;
    const entries = next.get(slice.name)!;
    const rv = slice.resourceVersion !== undefined ? { resourceVersion: slice.resourceVersion } : {};
    writes.push(entries.length === 0 ? { op: 'delete', name: slice.name, ...rv } : { op: 'update', name: slice.name, node, ...rv, entries });
  }
  for (let i = 0; i < fresh.length; i += capacity) writes.push({ op: 'create', name: newName(), node, entries: fresh.slice(i, i + capacity) });
  return writes;
}

/** The object the API stores for a slice: the node once, the entries without it. */
export function sliceObject(namespace: string, name: string, node: string, entries: readonly AddressEntry[], resourceVersion?: string): Record<string, unknown> {
  return {
    apiVersion: `${ADDRESS_SLICE.group}/${ADDRESS_SLICE.version}`, kind: ADDRESS_SLICE.kind,
    metadata: { name, namespace, labels: { ...MANAGED_BY }, ...(resourceVersion !== undefined ? { resourceVersion } : {}) },
    node,
    entries: entries.map(({ node: _node, ...rest }) => rest),
  };
}

/**
 * A slice as read from the API, with every entry checked: an agent reads these from the cluster
 * and must never trust a malformed one. Entries that fail are left out and reported; a slice that
 * names no node holds nothing.
 */
export function readSlice(o: unknown): { slice: SliceState; problems: string[] } {
  // Checked once per version of the object, when it arrives (list or watch), not per snapshot.
  const obj = (o ?? {}) as { metadata?: { name?: unknown; resourceVersion?: unknown }; node?: unknown; entries?: unknown };
  const name = typeof obj.metadata?.name === 'string' ? obj.metadata.name : '';
  const rv = typeof obj.metadata?.resourceVersion === 'string' ? obj.metadata.resourceVersion : undefined;
  const node = typeof obj.node === 'string' ? obj.node : '';
  const problems: string[] = [];
  const entries: AddressEntry[] = [];
  const raw = Array.isArray(obj.entries) && node ? obj.entries : [];
  if (!node) problems.push(`${name}: names no node`);
  else if (!Array.isArray(obj.entries)) problems.push(`${name}: entries is not a list`);
  raw.forEach((e: unknown, i) => {
    const x = (e ?? {}) as Record<string, unknown>;
    const text = (k: string) => (typeof x[k] === 'string' && x[k] !== '' ? x[k] as string : undefined);
    const ip = text('ip');
    const ipv6 = text('ipv6');
    const [namespace, serviceAccount, workload] = [text('namespace'), text('serviceAccount'), text('workload')];
    if (!ip || !isIPv4(ip) || (ipv6 !== undefined && !isIPv6(ipv6)) || !namespace || !serviceAccount || !workload || typeof x.captured !== 'boolean') {
      problems.push(`${name}: entry ${i} is malformed`);
      return;
    }
    entries.push({ ip, ...(ipv6 ? { ipv6 } : {}), namespace, serviceAccount, node, captured: x.captured, workload });
  });
  return { slice: { name, node, ...(rv !== undefined ? { resourceVersion: rv } : {}), entries }, problems };
}

const NO_LABELS: Readonly<Record<string, string>> = Object.freeze({});
/** Each slice's workloads, built once per version of the slice: one pod's change rebuilds one slice. */
const workloadsOf = new WeakMap<{ entries: readonly AddressEntry[] }, Workload[]>();

/**
 * A slice's entries as workloads. Strings repeated across entries (namespaces, service accounts,
 * nodes, workloads and the SPIFFE IDs made of them) are shared, not copied per pod: what keeps a
 * remote workload small.
 */
function sliceWorkloads(trustDomain: string, slice: { entries: readonly AddressEntry[] }): Workload[] {
  const cached = workloadsOf.get(slice);
  if (cached) return cached;
  const strings = new Map<string, string>();
  const share = (v: string) => { const held = strings.get(v); if (held !== undefined) return held; strings.set(v, v); return v; };
  const out = slice.entries.map((e): Workload => {
    const namespace = share(e.namespace);
    const serviceAccount = share(e.serviceAccount);
    const workload = share(e.workload);
    return {
      name: workload, namespace, serviceAccount, ip: e.ip, ...(e.ipv6 ? { ipv6: e.ipv6 } : {}), node: share(e.node),
      captured: e.captured, spiffeId: share(workloadSpiffeId(trustDomain, namespace, serviceAccount)), labels: NO_LABELS, workload,
    };
  });
  workloadsOf.set(slice, out);
  return out;
}

/**
 * The workloads an agent takes from the slices: every entry of another node (its own node's pods
 * it watches itself, in full); an address already taken by one of its own pods, or by an earlier
 * entry, is left out.
 */
export function workloadsFromSlices(trustDomain: string, slices: Iterable<{ node: string; entries: readonly AddressEntry[] }>, ownNode: string, taken: ReadonlySet<string>): Workload[] {
  const seen = new Set<string>();
  const out: Workload[] = [];
  for (const slice of slices) {
    if (slice.node === ownNode) continue;
    for (const w of sliceWorkloads(trustDomain, slice)) {
      if (w.node === ownNode || taken.has(w.ip) || seen.has(w.ip)) continue;
      seen.add(w.ip);
      out.push(w);
    }
  }
  return out;
}

/** A slice as the agents' informer caches it: its metadata, its checked entries, what was wrong. */
export interface SlimAddressSlice {
  metadata: { name: string; namespace?: string; resourceVersion?: string };
  node: string;
  entries: AddressEntry[];
  problems?: string[];
}

export function slimAddressSlice(o: any): SlimAddressSlice {
  const { slice, problems } = readSlice(o);
  return {
    metadata: { name: slice.name, namespace: o?.metadata?.namespace, ...(slice.resourceVersion !== undefined ? { resourceVersion: slice.resourceVersion } : {}) },
    node: slice.node, entries: slice.entries, ...(problems.length > 0 ? { problems } : {}),
  };
}
