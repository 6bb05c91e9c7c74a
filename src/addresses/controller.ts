// The address controller: publishes the mesh's pods as MeshAddressSlices (slices.ts) so that agents
// need not each watch every Pod of the cluster. It runs beside the CA (`meshlet ca serve
// --kubernetes --address-slices on`); every replica keeps its view warm (the pods, namespaces and
// nodes through the workload source, which applies the same membership and address checks the
// agents apply, and the slices), and the one holding the Lease (lease.ts) writes. Writes are
// batched by the source's window and planned against the slices as they are (planSlices), so a
// replica taking over writes only what changed. A failed write ends the round; the next event or
// the retry plans again from what the API holds.
import { randomBytes } from 'node:crypto';
import type { KubeConfig, KubernetesObject } from '@kubernetes/client-node';
import { ListWatch } from '@kubernetes/client-node/dist/cache.js';
import { ADD, DELETE, ERROR, UPDATE } from '@kubernetes/client-node/dist/informer.js';
import type { Logger } from 'pino';
import { backoffMs } from '../backoff.ts';
import { apiPath, kubeApi } from '../kube/api.ts';
import { createKubernetesSource, type KubernetesSource, TrimmingWatch } from '../workloads/kubernetes.ts';
import { LEASE_NAME, LeaderElection } from './lease.ts';
import { ADDRESS_SLICE, type AddressEntry, entryOf, planSlices, readSlice, sameEntry, type SliceState, type SliceWrite, sliceName, sliceObject } from './slices.ts';
import type { Workload } from '../workloads/model.ts';

export interface AddressControllerOptions {
  kubeConfig: KubeConfig;
  /** Where the slices and the Lease live (the CA's namespace). */
  namespace: string;
  /** This replica (its pod's name). */
  identity: string;
  trustDomain: string;
  log: Logger;
  /** Pod changes within this window become one round of writes. */
  batchMs?: number;
  lease?: { durationMs: number; renewDeadlineMs: number; retryMs: number };
  newName?: (node: string) => string;
}

/** A dead leader's slices stop following pods for at most the lease (6 s) and two tries (1 s each). */
const LEASE_TIMING = { durationMs: 6_000, renewDeadlineMs: 4_000, retryMs: 1_000 };

export interface AddressControllerStatus {
  leading: boolean;
  synced: boolean;
  slices: number;
  entries: number;
  /** Writes made since start, by kind. */
  writes: Record<SliceWrite['op'], number>;
  lastError?: string;
}

export class AddressController {
  readonly #o: AddressControllerOptions;
  readonly #log: Logger;
  readonly #api;
  readonly #source: KubernetesSource;
  readonly #slicesLw: ListWatch<KubernetesObject>;
  readonly #election: LeaderElection;
  /** The slices as last seen (the watch) or written (our own results): what a round plans against. */
  readonly #slices = new Map<string, SliceState>();
  #slicesListed = false;
  #desired: Map<string, AddressEntry> | undefined;
  readonly #desiredByNode = new Map<string, Map<string, AddressEntry>>();
  /**
   * Nodes whose slices may not match the table, planned in the next round: a pod's change replans
   * its node's slices, not the cluster's (150,000 pods: bench/README.md). 'all' at start, on a
   * new leadership, a re-list and after a failed round.
   */
  #dirty: Set<string> | 'all' = 'all';
  #round: Promise<void> | undefined;
  #again = false;
  #retry: NodeJS.Timeout | undefined;
  /** Failed rounds and failed slice watches in a row: each paces its own retry. */
  #failures = 0;
  #watchFailures = 0;
  #closed = false;
  readonly #writes: Record<SliceWrite['op'], number> = { create: 0, update: 0, delete: 0 };
  #lastError: string | undefined;

  constructor(o: AddressControllerOptions) {
    this.#o = o;
    this.#log = o.log.child({ component: 'address-controller' });
    this.#api = kubeApi(o.kubeConfig);
    this.#source = createKubernetesSource({ kubeConfig: o.kubeConfig, trustDomain: o.trustDomain, log: o.log, addressesOnly: true, debounceMs: o.batchMs ?? 250 });
    const path = apiPath(ADDRESS_SLICE, { namespace: o.namespace });
    // The watch's cache holds each slice as read (heldSlice), not the object: 150,000 entries twice
    // over were most of the controller's heap (bench/README.md, "Address slices at scale").
    this.#slicesLw = new ListWatch<KubernetesObject>(path, new TrimmingWatch(o.kubeConfig, heldSlice), async () => {
      const list = await this.#api.get<{ metadata?: { resourceVersion?: string }; items?: unknown[] }>(path);
      this.#watchFailures = 0;
      this.#slices.clear();
      list.items = (list.items ?? []).map(heldSlice);
      for (const item of list.items) this.#see(item);
      this.#slicesListed = true;
      this.#dirty = 'all';
      this.#schedule();
      return list as never;
    }, false);
    // The echo of our own write changes nothing: no round for it.
    for (const verb of [ADD, UPDATE] as const) this.#slicesLw.on(verb, (o: unknown) => { if (this.#see(o)) this.#schedule(); });
    this.#slicesLw.on(DELETE, (o: unknown) => {
      const name = (o as KubernetesObject).metadata?.name ?? '';
      const held = this.#slices.get(name);
      if (held) this.#mark(held.node);
      this.#slices.delete(name);
      this.#schedule();
    });
    this.#slicesLw.on(ERROR, (err: unknown) => {
      if (this.#closed) return;
      this.#lastError = `slices: ${(err as Error).message}`;
      this.#log.warn({ err: this.#lastError }, 'slice watch failed; retrying');
      setTimeout(() => { if (!this.#closed) void this.#slicesLw.start(); }, backoffMs(++this.#watchFailures, 1000, 30_000)).unref();
    });
    this.#election = new LeaderElection({
      api: this.#api, namespace: o.namespace, name: LEASE_NAME, identity: o.identity, log: this.#log, ...(o.lease ?? LEASE_TIMING),
      onStartedLeading: () => { this.#dirty = 'all'; this.#schedule(); },
      onStoppedLeading: () => undefined,
    });
  }

  async start(): Promise<void> {
    await this.#source.start({
      onSnapshot: (s) => { this.#take(s.workloads); this.#schedule(); },
      onError: (err) => this.#log.error({ err: err.message }, 'workload source rejected an update'),
    });
    await this.#slicesLw.start();
    this.#election.start();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retry);
    await this.#election.stop();
    await this.#round;
    await this.#slicesLw.stop();
    await this.#source.close();
  }

  get leading(): boolean { return this.#election.leading; }

  status(): AddressControllerStatus {
    let entries = 0;
    for (const s of this.#slices.values()) entries += s.entries.length;
    return {
      leading: this.#election.leading, synced: this.#desired !== undefined && this.#slicesListed,
      slices: this.#slices.size, entries, writes: { ...this.#writes }, ...(this.#lastError ? { lastError: this.#lastError } : {}),
    };
  }

  /** The table from a snapshot, and the nodes whose pods changed since the last one. */
  #take(workloads: readonly Workload[]): void {
    // Updated in place: a round with a few changes allocates for those, not for every pod.
    const table = this.#desired ?? new Map<string, AddressEntry>();
    const move = (ip: string, from: AddressEntry | undefined, to: AddressEntry | undefined) => {
      if (from) { this.#mark(from.node); this.#desiredByNode.get(from.node)?.delete(ip); }
      if (to) {
        this.#mark(to.node);
        let m = this.#desiredByNode.get(to.node);
        if (!m) this.#desiredByNode.set(to.node, m = new Map());
        m.set(ip, to);
      }
    };
    for (const w of workloads) {
      const e = entryOf(w);
      const p = table.get(w.ip);
      if (p === e) continue;
      table.set(w.ip, e);
      if (!p || !sameEntry(p, e)) move(w.ip, p, e);
      else this.#desiredByNode.get(e.node)?.set(w.ip, e);
    }
    // More entries than workloads: some pods left the table (an address is a workload's at most once).
    if (table.size > workloads.length) {
      const now = new Set(workloads.map((w) => w.ip));
      for (const [ip, p] of table) if (!now.has(ip)) { table.delete(ip); move(ip, p, undefined); }
    }
    this.#desired = table;
  }

  #mark(node: string): void {
    if (this.#dirty !== 'all') this.#dirty.add(node);
  }

  /**
   * Keeps a slice as the API has it, unless what we hold is as new (our own write's answer, then its
   * echo from the watch); says whether anything changed.
   */
  #see(o: unknown): boolean {
    const { slice, problems } = (o as Partial<HeldSlice>).read ?? readSlice(o);
    if (!slice.name) return false;
    if (problems.length > 0) this.#log.warn({ problems }, 'a slice holds malformed entries: rewritten without them');
    const held = this.#slices.get(slice.name);
    if (held && Number(held.resourceVersion) >= Number(slice.resourceVersion)) return false;
    // An entry as the table has it is kept once: the table's object stands for it in the slice.
    const table = this.#desired;
    if (table) slice.entries = slice.entries.map((e) => { const d = table.get(e.ip); return d && sameEntry(d, e) ? d : e; });
    // A malformed entry counts as absent, so the next plan rewrites the slice.
    this.#slices.set(slice.name, problems.length > 0 ? { ...slice, entries: [] } : slice);
    this.#mark(slice.node);
    if (held && held.node !== slice.node) this.#mark(held.node);
    return true;
  }

  #schedule(): void {
    if (this.#closed) return;
    if (this.#round) { this.#again = true; return; }
    this.#round = this.#reconcile().finally(() => {
      this.#round = undefined;
      if (this.#again) { this.#again = false; this.#schedule(); }
    });
  }

  async #reconcile(): Promise<void> {
    if (!this.#election.leading || !this.#desired || !this.#slicesListed || this.#closed) return;
    const dirty = this.#dirty;
    this.#dirty = new Set();
    const slices = [...this.#slices.values()].filter((sl) => dirty === 'all' || dirty.has(sl.node));
    const desired = dirty === 'all' ? this.#desired : new Map([...dirty].flatMap((node) => [...(this.#desiredByNode.get(node) ?? [])]));
    const writes = planSlices(slices, desired, this.#o.newName ?? ((node) => sliceName(node, randomBytes(4).toString('hex'))));
    if (writes.length === 0) return;
    const ns = this.#o.namespace;
    try {
      for (const w of writes) {
        if (!this.#election.leading || this.#closed) return;
        const path = apiPath(ADDRESS_SLICE, { namespace: ns, ...(w.op === 'create' ? {} : { name: w.name }) });
        if (w.op === 'delete') {
          await this.#api.remove(path, w.resourceVersion);
          this.#slices.delete(w.name);
        } else {
          const body = sliceObject(ns, w.name, w.node, w.entries, w.op === 'update' ? w.resourceVersion : undefined);
          this.#see(await this.#api.send(w.op === 'create' ? 'POST' : 'PUT', path, body));
        }
        this.#writes[w.op]++;
      }
      this.#failures = 0;
      this.#log.info({ writes: writes.length, created: writes.filter((w) => w.op === 'create').length }, 'address slices written');
    } catch (err) {
      // A conflict or a missing object: the watch brings the API's state, and the retry plans again.
      this.#dirty = 'all';
      this.#lastError = (err as Error).message;
      const retryInMs = backoffMs(++this.#failures, 500, 10_000);
      this.#log.warn({ err: this.#lastError, retryInMs }, 'writing address slices failed; planning again');
      clearTimeout(this.#retry);
      this.#retry = setTimeout(() => this.#schedule(), retryInMs);
    }
  }
}

/** A slice as the controller's watch caches it: what readSlice made of it, and the metadata a ListWatch keys on. */
interface HeldSlice extends KubernetesObject {
  read: ReturnType<typeof readSlice>;
}

function heldSlice(o: unknown): HeldSlice {
  const read = readSlice(o);
  const m = (o as KubernetesObject | undefined)?.metadata;
  return { metadata: { name: read.slice.name, ...(m?.namespace ? { namespace: m.namespace } : {}), ...(read.slice.resourceVersion ? { resourceVersion: read.slice.resourceVersion } : {}) }, read };
}
