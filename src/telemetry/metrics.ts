// prom-client metrics, served on :15020/metrics.
//
// The TCP metrics carry Istio's standard label set (reporter, source/destination workload, namespace
// and principal, connection_security_policy) under meshlet's prefix, so Istio's TCP dashboards adapt
// by renaming `istio_tcp_*` to `meshlet_tcp_*`. Cardinality is bounded by workloads (deployment-level
// names, not pods), service accounts and namespaces: no pod, IP or port labels on hot metrics.
//
// Hot path: connections add to plain numbers (tcp-series.ts) and the counters take the amounts
// when Prometheus scrapes (their collect()). Data planes in workers send theirs in batches
// (batch.ts), asked for before each scrape.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { MeteredConnection } from './connections.ts';
import type { TelemetryBatch } from './batch.ts';
import { TCP_LABELS, TcpSeriesBook, type TcpField } from './tcp-series.ts';
import { OverheadAccountant } from './overhead.ts';
import { VERSION } from '../version.ts';
import { registerMemoryMetrics } from '../memory-metrics.ts';
import type { MemoryPressure } from '../memory-target.ts';

export interface MetricsSources {
  /** The readiness tasks still pending (none: ready), for the ready gauge. */
  pendingTasks?(): string[];
  /** Certificates held: the expiry gauge reads them at scrape time. */
  certificates?(): Array<{ spiffeId: string; notAfter?: number }>;
  /** Asked before each scrape: data planes in workers send what they counted since the last. */
  refresh?(): Promise<void>;
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
  /** With address slices: whether their writer keeps them. */
  addressController?(): { stale: boolean } | undefined;
  /** The workload of each pod this agent serves (its node's captured pods), as `namespace/workload`. */
  localWorkloads?(): readonly string[];
  /** With a memory target (memory-target.ts): whether the agent is pressed now, and how often it was. */
  memory?(): MemoryPressure | undefined;
  /** Data planes serving now (with --min-workers below --workers, more start under load). */
  workers?(): number;
}

export class MeshMetrics {
  readonly registry = new Registry();
  readonly #refused: Counter<'reporter' | 'error'>;
  readonly #decisions: Counter<'action' | 'policy'>;
  readonly #setup: Histogram<'route'>;
  readonly #handshake: Histogram<'outcome'>;
  readonly #ejections: Counter<'service_name' | 'service_namespace'>;
  readonly #tcp = new TcpSeriesBook();
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
    const book = this.#tcp;
    const tcp = (name: string, help: string, field: TcpField) => new Counter({
      name, help, labelNames: TCP_LABELS, registers,
      collect() {
        if (field === 'sent' || field === 'received') book.flushOpen();
        book.take(field, (labels, amount) => this.inc(labels, amount));
      },
    });
    tcp('meshlet_tcp_connections_opened_total', 'TCP connections established through the mesh', 'opened');
    tcp('meshlet_tcp_connections_closed_total', 'TCP connections through the mesh that ended', 'closed');
    tcp('meshlet_tcp_sent_bytes_total', 'Bytes from source to destination', 'sent');
    tcp('meshlet_tcp_received_bytes_total', 'Bytes from destination back to source', 'received');
    // The agent's own CPU and memory, apportioned to the workloads it serves (overhead.ts).
    const overhead = new OverheadAccountant({
      cpuSeconds: () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; },
      rssBytes: () => process.memoryUsage.rss(),
      localWorkloads: () => sources.localWorkloads?.() ?? [],
    });
    const byWorkload = (key: string) => { const i = key.indexOf('/'); return { namespace: key.slice(0, i), workload: key.slice(i + 1) }; };
    new Counter({
      name: 'meshlet_workload_overhead_cpu_seconds_total', registers, labelNames: ['workload', 'namespace'],
      help: 'The agent\'s CPU seconds apportioned to the workloads it serves, by the connections, handshakes, bytes and wake-ups each caused (the rest per pod); summed, the agent\'s',
      collect() {
        overhead.account(book.takeUnits());
        this.reset();
        for (const [key, seconds] of overhead.cpu) this.inc(byWorkload(key), seconds);
      },
    });
    new Gauge({
      name: 'meshlet_workload_pods', help: 'Captured pods this agent serves, per workload', labelNames: ['workload', 'namespace'], registers,
      collect() {
        this.reset();
        const pods = new Map<string, number>();
        for (const key of sources.localWorkloads?.() ?? []) pods.set(key, (pods.get(key) ?? 0) + 1);
        for (const [key, n] of pods) this.set(byWorkload(key), n);
      },
    });
    new Gauge({
      name: 'meshlet_workload_overhead_memory_bytes', registers, labelNames: ['workload', 'namespace'],
      help: 'The agent\'s resident memory apportioned to the workloads it serves: its idle part evenly, the rest by open connections; summed, the agent\'s RSS',
      collect() {
        this.reset();
        for (const [key, bytes] of overhead.memory(book.openByWorkload())) this.set(byWorkload(key), bytes);
      },
    });
    this.#refused = new Counter({ name: 'meshlet_connections_refused_total', help: 'Connections refused or failed before any byte flowed, by error code (docs/errors.md)', labelNames: ['reporter', 'error'], registers });
    this.#decisions = new Counter({ name: 'meshlet_policy_decisions_total', help: 'Policy decisions by action and policy (audit_unmatched: an AUDIT policy selecting the destination did not match, what it would deny as ALLOW)', labelNames: ['action', 'policy'], registers });
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
      name: 'meshlet_address_table_stale', registers,
      help: 'With --remote-workloads slices: 1 while no address controller has been seen renewing its Lease (the agent serves the last slices; pods started elsewhere since are unknown), else 0',
      collect() {
        const s = sources.addressController?.();
        this.reset();
        if (s) this.set(s.stale ? 1 : 0);
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
    registerMemoryMetrics(registers, () => sources.memory?.());
    new Gauge({
      name: 'meshlet_data_plane_workers', registers,
      help: 'Data planes serving now: --min-workers at start, up to --workers as load needs them',
      collect() { this.set(sources.workers?.() ?? 1); },
    });
    // An agent up but not ready refuses its node's captured pods: the alert needs to see it.
    new Gauge({
      name: 'meshlet_agent_ready', help: 'Whether this agent is ready (1), or 0 with each readiness task still pending', labelNames: ['pending'], registers,
      collect() {
        this.reset();
        const pending = sources.pendingTasks?.() ?? [];
        if (pending.length === 0) this.set({ pending: '' }, 1);
        for (const task of pending) this.set({ pending: task }, 0);
      },
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
    this.#tcp.opened(c);
    this.#setupSeconds(route, setupSeconds);
  }

  #setupSeconds(route: string, seconds: number): void {
    let setup = this.#setupByRoute.get(route);
    if (!setup) this.#setupByRoute.set(route, setup = this.#setup.labels({ route }));
    setup.observe(seconds);
  }

  closed(c: MeteredConnection): void {
    this.#tcp.closed(c);
  }

  /** What a data plane in a worker counted since its last batch. */
  absorb(batch: TelemetryBatch): void {
    for (const amounts of batch.tcp) this.#tcp.add(amounts);
    for (const [route, seconds] of batch.setup) this.#setupSeconds(route, seconds);
    for (const [seconds, ok] of batch.handshakes) this.handshake(seconds, ok);
    for (const [key, n] of batch.refused) this.#refused.inc({ reporter: key[0], error: key[1] }, n);
    for (const [key, n] of batch.decisions) this.#decisions.inc({ action: key[0], policy: key[1] }, n);
    for (const [reason, n] of batch.stalled) this.#stalled.inc({ reason }, n);
    for (const [key, n] of batch.ejected) this.#ejections.inc({ service_namespace: key[0], service_name: key[1] }, n);
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
    await this.#sources.refresh?.();
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
