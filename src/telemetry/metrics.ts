// prom-client metrics, served on :15020/metrics.
//
// The TCP metrics carry Istio's standard label set (reporter, source/destination workload, namespace
// and principal, connection_security_policy) under meshlet's prefix, so Istio's TCP dashboards adapt
// by renaming `istio_tcp_*` to `meshlet_tcp_*`. Cardinality is bounded by workloads (deployment-level
// names, not pods), service accounts and namespaces: no pod, IP or port labels on hot metrics.
//
// Bytes of open connections are added at every scrape and the rest at close, so a long connection
// shows up before it ends, and every byte is counted exactly once.
//
// Hot path: prom-client hashes the label object on every inc(), which for eight labels with SPIFFE
// IDs cost more than the rest of a connection's accounting. So connections add to plain numbers in
// one record per label set (found through the source and destination Workload objects), and the
// counters take the accumulated amounts when Prometheus scrapes (their collect()).
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { MeteredConnection } from './connections.ts';
import { VERSION } from '../version.ts';

export const TCP_LABELS = [
  'reporter', 'source_workload', 'source_workload_namespace', 'source_principal',
  'destination_workload', 'destination_workload_namespace', 'destination_principal',
  'destination_service_name', 'destination_service_namespace', 'connection_security_policy',
] as const;
type TcpLabel = (typeof TCP_LABELS)[number];
export type TcpLabels = Record<TcpLabel, string>;

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

/** One TCP label set and what it accumulated since the last scrape. */
interface Series {
  labels: TcpLabels;
  opened: number;
  closed: number;
  sent: number;
  received: number;
}
type Field = 'opened' | 'closed' | 'sent' | 'received';

export interface MetricsSources {
  /** Certificates held: the expiry gauge reads them at scrape time. */
  certificates?(): Array<{ spiffeId: string; notAfter?: number }>;
  /** Tunnel pool: sessions and streams open. */
  pool?(): Array<{ streams: number }>;
  /** Connections open right now, per direction. */
  openConnections?(): Record<string, number>;
  /** Service endpoints ejected right now (outlier detection), per Service. */
  ejectedEndpoints?(): Array<{ namespace: string; name: string; ejected: number }>;
  /** Addresses the workload source refuses to the pods that claim them, right now. */
  refusedAddresses?(): ReadonlyArray<{ reason: string }>;
  /** Bytes waiting in the kernel send queues of all tunnel sockets, at the last stall check. */
  tunnelQueuedBytes?(): number;
}

export class MeshMetrics {
  readonly registry = new Registry();
  readonly #refused: Counter<'reporter' | 'error'>;
  readonly #decisions: Counter<'action' | 'policy'>;
  readonly #setup: Histogram<'route'>;
  readonly #handshake: Histogram<'outcome'>;
  readonly #ejections: Counter<'service_name' | 'service_namespace'>;
  /** Open (established, not yet closed) connections: bytes already added, and their label sets. */
  readonly #open = new Map<MeteredConnection, { sent: number; received: number; series: Series[] }>();
  /** Every label set seen, by its values: bounded by the label cardinality itself. */
  readonly #all = new Map<string, Series>();
  /** The same, reached through the pair of Workload objects (stable while the registry does not change them). */
  readonly #byPair = new WeakMap<object, WeakMap<object, Map<string, Series>>>();
  readonly #spoofed: Counter;
  readonly #stalled: Counter<'reason'>;
  readonly #setupByRoute = new Map<string, ReturnType<Histogram<'route'>['labels']>>();

  /** Filled in by readFrom() once the parts it reads exist (the gauges read them at scrape time). */
  readonly #sources: MetricsSources = {};

  constructor() {
    const sources = this.#sources;
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    // Which meshlet (and Node) each agent runs: one series at 1, as Prometheus' own build_info.
    new Gauge({ name: 'meshlet_build_info', help: 'The meshlet version and the Node.js version this agent runs', labelNames: ['version', 'node_version'], registers })
      .set({ version: VERSION, node_version: process.version }, 1);
    const all = this.#all;
    const flushOpen = () => { for (const c of this.#open.keys()) this.#flush(c); };
    const tcp = (name: string, help: string, field: Field) => new Counter({
      name, help, labelNames: TCP_LABELS, registers,
      collect() {
        if (field === 'sent' || field === 'received') flushOpen();
        for (const series of all.values()) {
          if (series[field] > 0) { this.inc(series.labels, series[field]); series[field] = 0; }
        }
      },
    });
    tcp('meshlet_tcp_connections_opened_total', 'TCP connections established through the mesh', 'opened');
    tcp('meshlet_tcp_connections_closed_total', 'TCP connections through the mesh that ended', 'closed');
    tcp('meshlet_tcp_sent_bytes_total', 'Bytes from source to destination', 'sent');
    tcp('meshlet_tcp_received_bytes_total', 'Bytes from destination back to source', 'received');
    this.#refused = new Counter({ name: 'meshlet_connections_refused_total', help: 'Connections refused or failed before any byte flowed, by error code (docs/errors.md)', labelNames: ['reporter', 'error'], registers });
    this.#decisions = new Counter({ name: 'meshlet_policy_decisions_total', help: 'Policy decisions by action and deciding policy', labelNames: ['action', 'policy'], registers });
    this.#setup = new Histogram({
      name: 'meshlet_connection_setup_seconds', help: 'From accepting a connection to relaying its first byte, per route', labelNames: ['route'], registers,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    });
    this.#handshake = new Histogram({
      name: 'meshlet_tunnel_handshake_seconds', help: 'TCP + mTLS + HTTP/2 setup of a new tunnel session (client side)', labelNames: ['outcome'], registers,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    });
    new Gauge({
      name: 'meshlet_certificate_expiry_timestamp_seconds', help: 'When each workload certificate held by this agent expires (Unix time)', labelNames: ['spiffe_id'], registers,
      collect() {
        this.reset();
        for (const c of sources.certificates?.() ?? []) if (c.notAfter) this.set({ spiffe_id: c.spiffeId }, c.notAfter / 1000);
      },
    });
    new Gauge({
      name: 'meshlet_tunnel_pool_sessions', help: 'Pooled tunnel sessions (per source identity and destination pod: one, and one more per 100 concurrent connections)', registers,
      collect() { this.set(sources.pool?.().length ?? 0); },
    });
    new Gauge({
      name: 'meshlet_tunnel_pool_streams', help: 'Connections multiplexed on pooled tunnel sessions', registers,
      collect() { this.set((sources.pool?.() ?? []).reduce((n, s) => n + s.streams, 0)); },
    });
    this.#ejections = new Counter({
      name: 'meshlet_service_endpoint_ejections_total', help: 'Service endpoints ejected by outlier detection (consecutive connect failures)',
      labelNames: ['service_name', 'service_namespace'], registers,
    });
    new Gauge({
      name: 'meshlet_service_endpoints_ejected', help: 'Service endpoints ejected right now', labelNames: ['service_name', 'service_namespace'], registers,
      collect() {
        this.reset();
        for (const s of sources.ejectedEndpoints?.() ?? []) this.set({ service_name: s.name, service_namespace: s.namespace }, s.ejected);
      },
    });
    new Gauge({
      name: 'meshlet_workload_addresses_refused', registers, labelNames: ['reason'],
      help: 'Pod addresses refused right now (mirror pod, no service account, outside the node\'s podCIDRs, held by a live pod on another node)',
      collect() {
        this.reset();
        const counts = new Map<string, number>();
        for (const r of sources.refusedAddresses?.() ?? []) counts.set(r.reason, (counts.get(r.reason) ?? 0) + 1);
        for (const [reason, n] of counts) this.set({ reason }, n);
      },
    });
    this.#spoofed = new Counter({
      name: 'meshlet_spoofed_packets_dropped_total', registers,
      help: 'Packets dropped before capture because they carried a captured pod\'s address but did not arrive on its interface (anti-spoofing)',
    });
    this.#stalled = new Counter({
      name: 'meshlet_tunnel_sessions_stalled_total', registers, labelNames: ['reason'],
      help: 'Tunnel sessions reset because the peer stopped reading: stalled past --tunnel-stall-timeout, or over the node\'s --tunnel-queue-budget',
    });
    new Gauge({
      name: 'meshlet_tunnel_queued_bytes', registers,
      help: 'Bytes waiting in the kernel send queues of all tunnel sockets (at the last stall check)',
      collect() { this.set(sources.tunnelQueuedBytes?.() ?? 0); },
    });
    new Gauge({
      name: 'meshlet_connections_open', help: 'Connections open right now, per direction', labelNames: ['direction'], registers,
      collect() {
        this.reset();
        for (const [direction, n] of Object.entries(sources.openConnections?.() ?? {})) this.set({ direction }, n);
      },
    });
  }

  /** The connection is established (upstream connected, tunnel accepted): counted as opened. */
  /** Where the gauges read the agent's state at scrape time (created after the metrics, which they count). */
  readFrom(sources: MetricsSources): void {
    Object.assign(this.#sources, sources);
  }

  opened(c: MeteredConnection, setupSeconds: number, route: string): void {
    const series = [this.#seriesOf(c, c.reporter)];
    if (c.alsoDestination) series.push(this.#seriesOf(c, 'destination'));
    for (const s of series) s.opened++;
    let setup = this.#setupByRoute.get(route);
    if (!setup) this.#setupByRoute.set(route, setup = this.#setup.labels({ route }));
    setup.observe(setupSeconds);
    this.#open.set(c, { sent: 0, received: 0, series });
  }

  #seriesOf(c: MeteredConnection, reporter: 'source' | 'destination'): Series {
    let byDst = this.#byPair.get(c.src ?? NO_WORKLOAD);
    if (!byDst) this.#byPair.set(c.src ?? NO_WORKLOAD, byDst = new WeakMap());
    let byRest = byDst.get(c.dst ?? NO_WORKLOAD);
    if (!byRest) byDst.set(c.dst ?? NO_WORKLOAD, byRest = new Map());
    const key = `${reporter}|${c.mutualTls ? 1 : 0}|${c.src ? '' : c.sourcePrincipal ?? ''}|${c.service ? `${c.service.namespace}/${c.service.name}` : ''}`;
    let series = byRest.get(key);
    if (!series) {
      const labels = { ...tcpLabels(c), reporter };
      const id = TCP_LABELS.map((l) => labels[l]).join('\u0000');
      series = this.#all.get(id);
      if (!series) this.#all.set(id, series = { labels, opened: 0, closed: 0, sent: 0, received: 0 });
      byRest.set(key, series);
    }
    return series;
  }

  /** Adds the bytes that flowed since the last flush. */
  #flush(c: MeteredConnection): void {
    const r = this.#open.get(c);
    if (!r) return;
    const sent = c.bytesSent - r.sent;
    const received = c.bytesReceived - r.received;
    for (const s of r.series) {
      s.sent += sent;
      s.received += received;
    }
    r.sent = c.bytesSent;
    r.received = c.bytesReceived;
  }

  closed(c: MeteredConnection): void {
    const r = this.#open.get(c);
    if (!r) return;
    this.#flush(c);
    for (const s of r.series) s.closed++;
    this.#open.delete(c);
  }

  refused(reporter: string, error: string): void {
    this.#refused.inc({ reporter, error });
  }

  decision(action: string, policy: string): void {
    this.#decisions.inc({ action, policy });
  }

  /** Packets the anti-spoofing rule dropped since the last count. */
  spoofedDropped(packets: number): void {
    this.#spoofed.inc(packets);
  }

  tunnelStalled(reason: string): void {
    this.#stalled.inc({ reason });
  }

  endpointEjected(namespace: string, name: string): void {
    this.#ejections.inc({ service_name: name, service_namespace: namespace });
  }

  handshake(seconds: number, ok: boolean): void {
    this.#handshake.observe({ outcome: ok ? 'ok' : 'failed' }, seconds);
  }

  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
