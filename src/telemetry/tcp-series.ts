// The TCP metrics' accumulator: plain numbers in one record per label set, found through the source
// and destination Workload objects. prom-client hashes the label object on every inc(), which for
// ten labels with SPIFFE IDs cost more than the rest of a connection's accounting; here a
// connection adds to numbers, and the counters (or a worker's batch) take the amounts later.
//
// Bytes of open connections are added at every flushOpen() and the rest at close, so a long
// connection shows up before it ends, and every byte is counted exactly once.
import type { MeteredConnection } from './connections.ts';

export const TCP_LABELS = [
  'reporter', 'source_workload', 'source_workload_namespace', 'source_principal',
  'destination_workload', 'destination_workload_namespace', 'destination_principal',
  'destination_service_name', 'destination_service_namespace', 'connection_security_policy',
] as const;
type TcpLabel = (typeof TCP_LABELS)[number];
export type TcpLabels = Record<TcpLabel, string>;

/** What a local workload caused since the last accounting (overhead.ts prices it). */
export interface WorkloadUnits {
  opened: number;
  handshakes: number;
  bytes: number;
  wakeups: number;
}

/** `namespace/workload` keys for the workload a series' reporter serves. */
export const workloadKey = (namespace: string, workload: string): string => `${namespace}/${workload}`;

/** `wakeups` (data relayed after a pause) and `handshakes` (connections.ts): for the overhead accounting only. */
export type TcpField = 'opened' | 'closed' | 'sent' | 'received' | 'wakeups' | 'handshakes';
export const TCP_FIELDS: readonly TcpField[] = ['opened', 'closed', 'sent', 'received', 'wakeups', 'handshakes'];

/** One label set and what it accumulated since it was last taken. */
export type TcpAmounts = { labels: TcpLabels } & Record<TcpField, number>;

const unknown = 'unknown';
/** Stands for "no workload" in the per-pair cache (WeakMap keys must be objects). */
const NO_WORKLOAD = {};

export function tcpLabels(c: MeteredConnection): TcpLabels {
  return {
    reporter: c.reporter,
    source_workload: c.src?.workload ?? unknown,
    source_workload_namespace: c.src?.namespace ?? unknown,
    source_principal: c.src?.spiffeId ?? c.sourcePrincipal ?? unknown,
    destination_workload: c.dst?.workload ?? unknown,
    destination_workload_namespace: c.dst?.namespace ?? unknown,
    destination_principal: c.dst?.spiffeId ?? unknown,
    destination_service_name: c.service?.name ?? unknown,
    destination_service_namespace: c.service?.namespace ?? unknown,
    connection_security_policy: c.mutualTls ? 'mutual_tls' : 'none',
  };
}

export class TcpSeriesBook {
  /** Open (established, not yet closed) connections: bytes already added, and their label sets. */
  readonly #open = new Map<MeteredConnection, { sent: number; received: number; wakeups: number; series: TcpAmounts[] }>();
  /** Every label set seen, by its values: bounded by the label cardinality itself. */
  readonly #all = new Map<string, TcpAmounts>();
  /** The same, reached through the pair of Workload objects (stable while the registry does not change them). */
  readonly #byPair = new WeakMap<object, WeakMap<object, Map<string, TcpAmounts>>>();
  /** What each local workload (the reporter's side) caused since takeUnits(), and its open connections (overhead.ts). */
  #units = new Map<string, WorkloadUnits>();
  readonly #openBy = new Map<string, number>();
  /** Each series' local workload key, made once with the series. */
  readonly #localOf = new WeakMap<TcpAmounts, string>();

  /** The connection is established: counted as opened, under its reporter (and as destination too, same-node). */
  opened(c: MeteredConnection): void {
    const series = [this.#seriesOf(c, c.reporter)];
    if (c.alsoDestination) series.push(this.#seriesOf(c, 'destination'));
    for (const s of series) this.#charge(s, { opened: 1, handshakes: c.handshakes ?? 0 });
    this.#open.set(c, { sent: 0, received: 0, wakeups: 0, series });
  }

  closed(c: MeteredConnection): void {
    const r = this.#open.get(c);
    if (!r) return;
    this.#flush(c);
    for (const s of r.series) this.#charge(s, { closed: 1 });
    this.#open.delete(c);
  }

  /** Adds the bytes open connections moved since the last flush. */
  flushOpen(): void {
    for (const c of this.#open.keys()) this.#flush(c);
  }

  /** Amounts counted elsewhere (a worker's batch), added under their labels. */
  add(amounts: TcpAmounts): void {
    this.#charge(this.#byLabels(amounts.labels), amounts);
  }

  /** What each local workload caused since the last call (open connections' bytes included), reset. */
  takeUnits(): Map<string, WorkloadUnits> {
    this.flushOpen();
    const out = this.#units;
    this.#units = new Map();
    return out;
  }

  /** Connections open now, by local workload. */
  openByWorkload(): ReadonlyMap<string, number> {
    return this.#openBy;
  }

  /** Adds to a series and to its local workload's units. */
  #charge(s: TcpAmounts, d: Partial<Record<TcpField, number>>): void {
    for (const f of TCP_FIELDS) s[f] += d[f] ?? 0;
    const key = this.#localOf.get(s) as string;
    let u = this.#units.get(key);
    if (!u) this.#units.set(key, u = { opened: 0, handshakes: 0, bytes: 0, wakeups: 0 });
    u.opened += d.opened ?? 0;
    u.handshakes += d.handshakes ?? 0;
    u.bytes += (d.sent ?? 0) + (d.received ?? 0);
    u.wakeups += d.wakeups ?? 0;
    const change = (d.opened ?? 0) - (d.closed ?? 0);
    if (change !== 0) {
      const n = (this.#openBy.get(key) ?? 0) + change;
      if (n > 0) this.#openBy.set(key, n); else this.#openBy.delete(key);
    }
  }

  /** Each label set's amount of `field` since it was last taken (non-zero only), reset to 0. */
  take(field: TcpField, use: (labels: TcpLabels, amount: number) => void): void {
    for (const s of this.#all.values()) {
      if (s[field] > 0) { use(s.labels, s[field]); s[field] = 0; }
    }
  }

  /** Everything since the last take, open connections' bytes included, as plain data; reset to 0. */
  takeAll(): TcpAmounts[] {
    this.flushOpen();
    const out: TcpAmounts[] = [];
    for (const s of this.#all.values()) {
      if (TCP_FIELDS.some((f) => s[f] > 0)) out.push({ ...s });
      for (const f of TCP_FIELDS) s[f] = 0;
    }
    return out;
  }

  #seriesOf(c: MeteredConnection, reporter: 'source' | 'destination'): TcpAmounts {
    let byDst = this.#byPair.get(c.src ?? NO_WORKLOAD);
    if (!byDst) this.#byPair.set(c.src ?? NO_WORKLOAD, byDst = new WeakMap());
    let byRest = byDst.get(c.dst ?? NO_WORKLOAD);
    if (!byRest) byDst.set(c.dst ?? NO_WORKLOAD, byRest = new Map());
    const key = `${reporter}|${c.mutualTls ? 1 : 0}|${c.src ? '' : c.sourcePrincipal ?? ''}|${c.service ? `${c.service.namespace}/${c.service.name}` : ''}`;
    let series = byRest.get(key);
    if (!series) byRest.set(key, series = this.#byLabels({ ...tcpLabels(c), reporter }));
    return series;
  }

  #byLabels(labels: TcpLabels): TcpAmounts {
    const id = TCP_LABELS.map((l) => labels[l]).join('\u0000');
    let series = this.#all.get(id);
    if (!series) {
      this.#all.set(id, series = { labels, opened: 0, closed: 0, sent: 0, received: 0, wakeups: 0, handshakes: 0 });
      const l = labels;
      this.#localOf.set(series, l.reporter === 'source' ? workloadKey(l.source_workload_namespace, l.source_workload) : workloadKey(l.destination_workload_namespace, l.destination_workload));
    }
    return series;
  }

  #flush(c: MeteredConnection): void {
    const r = this.#open.get(c);
    if (!r) return;
    const sent = c.bytesSent - r.sent;
    const received = c.bytesReceived - r.received;
    const wakeups = c.wakeups - r.wakeups;
    if (sent === 0 && received === 0 && wakeups === 0) return;
    for (const s of r.series) this.#charge(s, { sent, received, wakeups });
    r.sent = c.bytesSent;
    r.received = c.bytesReceived;
    r.wakeups = c.wakeups;
  }
}
