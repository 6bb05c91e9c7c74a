// The node agent's control plane: the workload source, capture upkeep, identities, metrics and
// admin, and the data plane (proxy/data-plane.ts) it feeds with snapshots (proxy/snapshot.ts). Owns
// their lifecycle as one state machine: starting -> serving -> ready -> draining -> closed.
import type net from 'node:net';
import type http from 'node:http';
import type { Logger } from 'pino';
import type { AgentConfig } from './config/agent.ts';
import { listenAgentEndpoints } from './admin/agent-endpoints.ts';
import { configDump } from './admin/config-dump.ts';
import { Readiness } from './admin/server.ts';
import type { Succession } from './admin/succession.ts';
import { hasNetAdmin } from './capture/exec.ts';
import { createVouchWriter } from './capture/ipset.ts';
import { resolveIptablesMode } from './capture/iptables-mode.ts';
import { CaptureKeeper } from './capture/keeper.ts';
import { ProbeGate } from './capture/probe-gate.ts';
import { CaptureTools } from './capture/tools.ts';
import { PrerequisiteError } from './errors.ts';
import { type KeptMemory, keepMemory } from './memory-target.ts';
import { trimMallocEvery, tuneMalloc } from './malloc-tuning.ts';
import { releaseStartupPagesOnce } from './startup-pages.ts';
import { CertificateManager } from './identity/certs.ts';
import { identityProvider } from './identity/from-config.ts';
import type { CertificateProvider } from './identity/provider.ts';
import { createDataPlane } from './agent-data-plane.ts';
import type { DataPlaneHost } from './proxy/host.ts';
import type { DataPlaneSnapshot } from './proxy/snapshot.ts';
import type { DataPlaneGauges } from './proxy/view.ts';
import { MeshMetrics } from './telemetry/metrics.ts';
import { workloadSource } from './workloads/from-config.ts';
import type { MeshSnapshot } from './workloads/model.ts';
import { WorkloadRegistry } from './workloads/registry.ts';
import { ReleaseGrace } from './workloads/release-grace.ts';
import type { WorkloadSource } from './workloads/source.ts';

export interface AgentDeps {
  log: Logger;
  source?: WorkloadSource;
}

/** How long a starting agent waits for all its certificates before it opens the data ports anyway. */
const LISTEN_ANYWAY_MS = 30_000;
/** How long after a failed listen (a port still held) the agent tries again. */
const LISTEN_RETRY_MS = 500;

/**
 * starting: data ports closed (`opening` while they are being opened); serving: open, some
 * readiness task pending; ready: all done; draining: close() under way; closed.
 */
export type AgentState =
  | { phase: 'starting'; opening: boolean }
  | { phase: 'serving' }
  | { phase: 'ready' }
  | { phase: 'draining' }
  | { phase: 'closed' };

type Provider = CertificateProvider & { close?(): Promise<void> };

export class Agent {
  readonly config: AgentConfig;
  readonly registry: WorkloadRegistry;
  readonly certs: CertificateManager;
  readonly metrics: MeshMetrics | undefined;
  /** The data plane (one, or N workers), fed by #publish(); read only for metrics and the dump. */
  readonly data: DataPlaneHost;
  readonly capture: CaptureKeeper;
  readonly probeGate: ProbeGate;
  readonly readiness = new Readiness();
  #state: AgentState = { phase: 'starting', opening: false };
  readonly #startedAt = Date.now();
  readonly #log: Logger;
  readonly #rootLog: Logger;
  readonly #source: WorkloadSource;
  readonly #provider: Provider;
  /** The capture tools, through long-lived shells (capture/tools.ts); closed last. */
  readonly #tools: CaptureTools;
  /** Admin, readiness and metrics. */
  readonly #servers: Array<net.Server | http.Server> = [];
  #succession: Succession | undefined;
  readonly #timers = new Set<NodeJS.Timeout>();
  /** Snapshots published so far, and the last one's mesh generation. */
  #published = { generation: 0, meshGeneration: 0, scheduled: false };
  #memory: KeptMemory | undefined;
  readonly #releaseGrace: ReleaseGrace;
  #graceTimer: NodeJS.Timeout | undefined;
  /** The data plane's gauges as of the last scrape's refresh. */
  #gauges: DataPlaneGauges = { pools: [], openConnections: {}, ejected: [], tunnelQueuedBytes: 0 };
  /** The shutdown under way (close), and when its drain ends (destroy moves that to now). */
  #shutdown: Promise<void> | undefined;
  #drainUntil = Number.POSITIVE_INFINITY;

  /** Every part, in dependency order: what reports to another comes after it. */
  private constructor(config: AgentConfig, log: Logger, parts: { tools: CaptureTools; source: WorkloadSource; registry: WorkloadRegistry; provider: Provider }) {
    this.config = config;
    this.#rootLog = log;
    this.#log = log.child({ component: 'agent', node: config.nodeName });
    ({ tools: this.#tools, source: this.#source, registry: this.registry, provider: this.#provider } = parts);
    this.#releaseGrace = new ReleaseGrace({ node: config.nodeName });
    this.certs = new CertificateManager({ provider: this.#provider, log, keyAlgorithm: config.keyAlgorithm });
    const metrics = this.metrics = config.metrics ? new MeshMetrics() : undefined;
    this.capture = new CaptureKeeper({
      config, tools: this.#tools, log: this.#log,
      localAddresses: () => new Set(this.registry.localCaptured().map((w) => w.ip)),
      onChange: () => this.#advance(),
      ...(metrics ? { onSpoofed: (n: number) => metrics.spoofedDropped(n) } : {}),
    });
    this.probeGate = new ProbeGate({
      ttlMs: config.probeGateTtlMs, log, vouched: () => this.#vouched(), write: createVouchWriter(this.#tools, config.capture),
    });
    this.data = createDataPlane(config, {
      log, metrics,
      // A sidecar shares its pod's fate already: kubelet probes the pod, the gate has nothing to add.
      ...(config.sidecar ? {} : { vouchFor: (podIp: string) => this.probeGate.ensure(podIp) }),
    });
    trimMallocEvery(config.mallocTrimMs, this.data);
    // Certificates and bundles reach the data plane in the next snapshot (one per burst).
    this.certs.on('change', () => this.#schedulePublish());
    metrics?.readFrom({
      pendingTasks: () => this.readiness.pending(),
      certificates: () => this.certs.states().flatMap((c) => (c.state === 'available' ? [{ spiffeId: c.spiffeId, notAfter: c.notAfter }] : [])),
      refresh: async () => { this.#gauges = await this.data.gauges(); },
      pool: () => this.#gauges.pools, openConnections: () => this.#gauges.openConnections, memory: () => this.#memory?.target.state(),
      addressController: () => this.#source.addressController?.(),
      ejectedEndpoints: () => this.#gauges.ejected.map((e) => ({ namespace: e.namespace, name: e.name, ejected: e.ips.length })),
      refusedAddresses: () => this.registry.snapshot?.refused ?? [],
      tunnelQueuedBytes: () => this.#gauges.tunnelQueuedBytes, workers: () => this.data.workers,
      localWorkloads: () => this.registry.localCaptured().map((w) => `${w.namespace}/${w.workload}`),
    });
    this.readiness.add({ name: 'capture', done: () => this.capture.installed });
    this.readiness.add({ name: 'workloads-synced', done: () => this.registry.synced && this.capture.synced });
    this.readiness.add({ name: 'certificates', done: () => this.certs.allReady });
    this.readiness.add({ name: 'listening', done: () => this.#state.phase === 'serving' || this.#state.phase === 'ready' });
  }

  static async start(config: AgentConfig, deps: AgentDeps): Promise<Agent> {
    // The agent keeps the captured-pods ipset in step with the registry and reads the nat table:
    // without CAP_NET_ADMIN it could never become ready, so say so now instead of failing later.
    // A sidecar has no ipset to keep; without the capability it trusts the init step's capture.
    if (!config.sidecar && !hasNetAdmin()) {
      throw new PrerequisiteError('meshlet agent needs CAP_NET_ADMIN to manage the captured-pods ipset and read the nat ' +
        'table (run it as root, or give the DaemonSet container the NET_ADMIN capability)');
    }
    // Before the first buffer is allocated (malloc-tuning.ts).
    const malloc = tuneMalloc();
    deps.log.info({ ...malloc, trimEveryMs: config.mallocTrimMs }, malloc.applied ? 'malloc tuned' : 'malloc not tuned');
    // First, while this process is small: the shell that runs every capture tool from now on.
    const tools = CaptureTools.throughShells();
    // Into the iptables kube-proxy and the CNI use, as init does (capture/iptables-mode.ts).
    const { settings: capture, reason } = await resolveIptablesMode(tools, config.capture);
    if (capture.backend === 'iptables') deps.log.info({ iptablesMode: capture.iptablesMode, reason }, 'iptables mode');
    config = { ...config, capture };
    const source = deps.source ?? await workloadSource(config.workloads, deps.log);
    const registry = new WorkloadRegistry(config.nodeName, config.sidecar);
    const provider = await identityProvider(config, deps.log, () => registry.trustDomain);
    const agent = new Agent(config, deps.log, { tools, source, registry, provider });
    // Before capture and source (a first list takes seconds): until then an older agent answers
    // readiness for this one (admin/succession.ts).
    const endpoints = await listenAgentEndpoints({ config, log: deps.log, readiness: agent.readiness, metrics: agent.metrics,
      configDump: () => agent.configDump(), onLogLevel: (level) => agent.data.setLogLevel(level) });
    agent.#servers.push(...endpoints.servers);
    agent.#succession = endpoints.succession;
    await agent.capture.start();
    await source.start({
      onSnapshot: (s) => agent.#apply(s),
      onError: (err) => agent.#log.error({ err: err.message }, 'workload source rejected an update; the last good registry stays in force'),
    });
    // One look past the wait for certificates (#advance), since nothing else may happen then.
    agent.#after(LISTEN_ANYWAY_MS, () => agent.#advance());
    agent.#advance();
    if (!config.sidecar) agent.probeGate.start();
    return agent;
  }

  /**
   * Moves the state machine on whatever changed (capture, sets, registry, certificates, a listen):
   * opens the data ports (15001, 15006, 15008) only once capture, registry and certificates are in
   * place. Until then captured connections are refused by the kernel (capture is installed, nobody
   * listens), never half-served; during an upgrade the new agent takes no connection before it can
   * serve it, because SO_REUSEPORT would otherwise hand it some of them at once. Logs the moments
   * the agent becomes ready, and stops being (an upgrade waits for the line, not for a port).
   */
  #advance(): void {
    const s = this.#state;
    if (s.phase === 'starting' && !s.opening) {
      const waiting = this.readiness.pending().filter((t) => t !== 'listening');
      // One workload whose certificate never comes must not keep the node's other pods off the
      // mesh for ever: after a while the agent listens anyway (that pod's connections are refused
      // with no_certificate; the agent stays not ready).
      const certsOverdue = waiting.length === 1 && waiting[0] === 'certificates' && Date.now() - this.#startedAt >= LISTEN_ANYWAY_MS;
      if (waiting.length > 0 && !certsOverdue) return;
      if (certsOverdue) this.#log.warn({ afterMs: Date.now() - this.#startedAt }, 'certificates still missing: listening anyway');
      this.#open();
    } else if (s.phase === 'serving' && this.readiness.ready) {
      this.#state = { phase: 'ready' };
      this.#log.info({ afterMs: Date.now() - this.#startedAt }, 'agent ready');
      releaseStartupPagesOnce(this.config.releaseStartupPages, this.#log); // start-up is over (startup-pages.ts)
      // A node registered with the not-ready taint takes pods from now on.
      if (!this.config.sidecar) this.#source.nodeReady?.(this.config.nodeName);
    } else if (s.phase === 'ready' && !this.readiness.ready) {
      this.#state = { phase: 'serving' };
      this.#log.warn({ pending: this.readiness.pending() }, 'agent no longer ready');
    }
  }

  #open(): void {
    this.#state = { phase: 'starting', opening: true };
    // Vouch for the pods before the first connection can arrive: the agent's own deliveries to
    // them pass the same gate as kubelet's probes.
    const vouched = this.config.sidecar ? Promise.resolve() : this.probeGate.refresh();
    vouched.then(() => {
      // The identities issued while it waited: in the data plane before the first connection.
      this.#publish();
      return this.data.listen();
    }).then(
      () => {
        if (this.#state.phase !== 'starting') return;
        this.#state = { phase: 'serving' };
        this.#log.info({ ports: this.config.ports }, 'agent listening');
        // From now on, not during start-up: see heap-headroom.ts and memory-target.ts.
        this.#memory ??= keepMemory({ headroomMiB: this.config.heapHeadroomMiB, targetMiB: this.config.memoryTargetMiB, log: this.#log, workers: this.data });
        this.#advance();
      },
      (err: Error) => {
        if (this.#state.phase !== 'starting') return;
        this.#state = { phase: 'starting', opening: false };
        this.#log.error({ err: err.message }, 'cannot listen on the data ports; retrying');
        this.#after(LISTEN_RETRY_MS, () => this.#advance());
      },
    );
  }

  /**
   * The pods this agent can serve right now, which the probe gate lets the node (kubelet) reach:
   * local and captured, with a certificate, while the data ports are open (or opening) and capture
   * is in place.
   */
  #vouched(): string[] {
    const s = this.#state;
    const open = (s.phase === 'starting' && s.opening) || s.phase === 'serving' || s.phase === 'ready';
    if (!open || !this.capture.installed || !this.capture.synced) return [];
    const pending = new Set(this.certs.pendingIdentities());
    return this.registry.localCaptured().filter((w) => !pending.has(w.spiffeId)).map((w) => w.ip);
  }

  #apply(raw: MeshSnapshot): void {
    // Pods of this node released a moment ago stay served, leaving, for a grace (release-grace.ts).
    const snapshot = this.config.sidecar ? raw : this.#releaseGrace.apply(raw);
    const end = this.#releaseGrace.nextEnd;
    clearTimeout(this.#graceTimer);
    if (end !== undefined) this.#graceTimer = setTimeout(() => this.#apply(raw), Math.max(0, end - Date.now())).unref();
    this.registry.replace(snapshot);
    const local = this.registry.localCaptured();
    this.certs.reconcile(new Set(local.map((w) => w.spiffeId)));
    this.#published.meshGeneration++;
    this.#publish();
    this.#log.info({ workloads: snapshot.workloads.length, localCaptured: local.length }, 'registry updated');
    const strict = this.config.nonTcpToStrict === 'drop' ? local.filter((w) => snapshot.mtls[w.namespace] === 'strict') : [];
    this.capture.sync({
      local: new Set(local.map((w) => w.ip)),
      local6: new Set(local.flatMap((w) => (w.ipv6 ? [w.ipv6] : []))),
      destinations: this.registry.destinations, podRanges: this.registry.podRanges,
      strict: new Set(strict.map((w) => w.ip)),
    });
    this.#advance();
  }

  /** The data plane's next snapshot: the registry's mesh and every identity's material, now. */
  #publish(): void {
    const mesh = this.registry.snapshot;
    if (!mesh) return; // nothing to serve before the first mesh (identities come with it)
    const snapshot: DataPlaneSnapshot = {
      generation: ++this.#published.generation, meshGeneration: this.#published.meshGeneration, mesh, identities: this.certs.materials(),
    };
    this.data.apply(snapshot);
  }

  #schedulePublish(): void {
    if (this.#published.scheduled) return;
    this.#published.scheduled = true;
    setImmediate(() => {
      this.#published.scheduled = false;
      this.#publish();
      this.#advance();
    });
  }

  #after(ms: number, fn: () => void): void {
    const t = setTimeout(() => { this.#timers.delete(t); fn(); }, ms).unref();
    this.#timers.add(t);
  }

  async configDump(): Promise<unknown> {
    return configDump({
      node: this.config.nodeName,
      mode: this.config.sidecar ? { sidecar: `${this.config.sidecar.namespace}/${this.config.sidecar.name}` } : 'node',
      phase: this.#state.phase,
      readiness: this.readiness,
      registry: this.registry,
      workloadSource: { kind: this.config.workloads.kind, ...this.#source.status?.() },
      identityProvider: this.#provider.name,
      probeGate: this.probeGate.status(),
      heap: { headroomMiB: this.config.heapHeadroomMiB, youngCollectionMiB: this.config.youngCollectionMiB, growingPercent: this.#memory?.heap.percent(), target: this.#memory?.target.state() },
      workers: this.data.workers, maxWorkers: this.config.workers,
      certs: this.certs, data: await this.data.dump(),
    });
  }

  /**
   * Stops accepting, tells tunnel peers to go away (GOAWAY), lets open connections finish for up to
   * the drain period, then closes whatever is left. Called again, returns the same shutdown.
   */
  close(): Promise<void> {
    this.#shutdown ??= this.#close();
    return this.#shutdown;
  }

  /**
   * What close() does, without the drain: open connections and sessions are reset now (a second
   * SIGTERM or SIGINT). During a close() already under way, it cuts that close's drain short.
   */
  destroy(): Promise<void> {
    this.#drainUntil = 0;
    return this.close();
  }

  async #close(): Promise<void> {
    this.#state = { phase: 'draining' };
    this.readiness.drain();
    this.#succession?.close(); // a newer agent beside this one answers readiness from now on
    // Stop vouching first: without a successor the node's pods fail their probes within the TTL and
    // leave their Services while this agent drains.
    this.probeGate.stop();
    this.capture.close();
    for (const t of this.#timers) clearTimeout(t);
    clearTimeout(this.#graceTimer);
    await this.#source.close();
    const closed = Promise.all(this.#servers.map((s) => new Promise<void>((resolve) => {
      s.close(() => resolve());
      if ('closeIdleConnections' in s) s.closeIdleConnections();
    })));
    this.#drainUntil = Math.min(this.#drainUntil, Date.now() + this.config.drainMs);
    await this.data.close(() => this.#drainUntil);
    this.certs.close();
    await this.#provider.close?.();
    await closed;
    this.#memory?.stop();
    this.#tools.close();
    this.#state = { phase: 'closed' };
  }
}
