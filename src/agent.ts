// The node agent's control plane: the workload source, capture membership, identities, metrics and
// admin, and the data plane (proxy/data-plane.ts) it feeds with snapshots (proxy/snapshot.ts). Owns
// their lifecycle (ready, drain, close).
import type net from 'node:net';
import type http from 'node:http';
import type { Logger } from 'pino';
import { type AgentConfig, LOG_LEVELS, type LogLevel } from './config.ts';
import { AdminRequestError, createAdminServer, createMetricsServer, createReadinessServer, Readiness } from './admin/server.ts';
import { hasNetAdmin } from './capture/exec.ts';
import { captureFamilies, checkCapture } from './capture/install.ts';
import { CaptureTools } from './capture/tools.ts';
import { BridgeGuard, type Bindings } from './capture/bridge-ports.ts';
import { PrerequisiteError } from './errors.ts';
import { keepHeapHeadroom } from './heap-headroom.ts';
import { tuneMalloc } from './malloc-tuning.ts';
import { createMemberSync, createVouchWriter, type IpsetSync } from './capture/ipset.ts';
import { ProbeGate } from './capture/probe-gate.ts';
import { configDump } from './admin/config-dump.ts';
import { CertificateManager } from './identity/certs.ts';
import { type CertificateProvider, createLocalCaProvider } from './identity/provider.ts';
import { DirRootStore, loadRootSet } from './identity/roots.ts';
import { DataPlane } from './proxy/data-plane.ts';
import { listen } from './proxy/listeners.ts';
import type { DataPlaneSettings, DataPlaneSnapshot } from './proxy/snapshot.ts';
import { addressesInNetns } from './capture/socket.ts';
import { adminLogger, setLogLevel } from './telemetry/log.ts';
import { MeshMetrics } from './telemetry/metrics.ts';
import { workloadSource } from './workloads/from-config.ts';
import type { MeshSnapshot } from './workloads/model.ts';
import { WorkloadRegistry } from './workloads/registry.ts';
import type { WorkloadSource } from './workloads/source.ts';

export interface AgentDeps {
  log: Logger;
  source?: WorkloadSource;
}

const CAPTURE_RECHECK_MS = 5_000;
/** How long a starting agent waits for all its certificates before it opens the data ports anyway. */
const LISTEN_ANYWAY_MS = 30_000;

export class Agent {
  readonly registry: WorkloadRegistry;
  readonly certs: CertificateManager;
  readonly readiness = new Readiness();
  /** The data plane, fed by #publish() and read by nothing else of the agent but its gauges and dump. */
  readonly data: DataPlane;
  /** Admin, readiness and metrics. */
  readonly #servers: Array<net.Server | http.Server> = [];
  readonly #log: Logger;
  readonly #source: WorkloadSource;
  readonly #rootLog: Logger;
  /** Admin API changes, logged whatever the level. */
  readonly #adminLog: Logger;
  readonly metrics: MeshMetrics | undefined;
  #captureInstalled = false;
  /** The anti-spoofing rule's kernel counter at the last capture check. */
  #spoofedSeen = { route: 0, bridge: 0 };
  /** Captured addresses bound to their bridge ports, on bridge CNIs (node mode). */
  readonly #bridge: BridgeGuard | undefined;
  /** The last bridge-guard failure logged (each new one is, once). */
  #bridgeError: string | undefined;
  #contestsLogged = '[[],[]]';
  #ipsetSynced = false;
  #captureTimer: NodeJS.Timeout | undefined;
  #readyTimer: NodeJS.Timeout | undefined;
  #dataListening = false;
  /** The data ports are open or opening: the probe gate may vouch for this node's pods. */
  #vouching = false;
  #closing = false;
  /** The shutdown under way (close), and when its drain ends (destroy moves that to now). */
  #shutdown: Promise<void> | undefined;
  #drainUntil = Number.POSITIVE_INFINITY;
  /** The capture tools, through long-lived shells (capture/tools.ts); closed last. */
  readonly #tools: CaptureTools;
  #heapHeadroom: ReturnType<typeof keepHeapHeadroom> | undefined;
  readonly probeGate: ProbeGate;
  /** Snapshots published so far, and the last one's mesh generation. */
  #published = { generation: 0, meshGeneration: 0, scheduled: false };
  /** One sync for the agent's life: its queue is what keeps two snapshots' writes from racing. */
  readonly #members: IpsetSync;
  /** The destinations in the mesh (node mode): the only ones capture redirects. */
  readonly #destinations: IpsetSync | undefined;
  /** This node's STRICT pods, which get no forwarded non-TCP (node mode; empty unless --non-tcp-to-strict drop). */
  readonly #strict: IpsetSync | undefined;
  /** The IPv6 guard's set (node mode, on a kernel with IPv6): the captured pods' IPv6 addresses. */
  readonly #members6: IpsetSync | undefined;
  readonly #provider: CertificateProvider & { close?(): Promise<void> };

  readonly config: AgentConfig;

  private constructor(config: AgentConfig, deps: Required<AgentDeps>, certs: CertificateManager, provider: CertificateProvider & { close?(): Promise<void> }, metrics: MeshMetrics | undefined, tools: CaptureTools) {
    this.config = config;
    this.#tools = tools;
    this.#rootLog = deps.log;
    this.#adminLog = adminLogger(deps.log, { node: config.nodeName });
    this.metrics = metrics;
    this.#log = deps.log.child({ component: 'agent', node: config.nodeName });
    this.#source = deps.source;
    this.registry = new WorkloadRegistry(config.nodeName, config.sidecar);
    this.certs = certs;
    this.#provider = provider;
    // A sidecar's pod capture takes everything the pod sends: there is no set of pods to keep.
    this.#members = config.sidecar ? { sync: async () => ({ added: 0, removed: 0 }), members: async () => new Set() } : createMemberSync(tools, config.capture);
    this.#destinations = config.sidecar ? undefined : createMemberSync(tools, config.capture, 'destinations');
    this.#strict = config.sidecar ? undefined : createMemberSync(tools, config.capture, 'strict');
    this.#bridge = config.sidecar ? undefined : new BridgeGuard((cmd, args, input) => tools.tool(cmd, args, input), addressesInNetns);
    this.#members6 = captureFamilies(config.capture).includes(6) ? createMemberSync(tools, config.capture, 'captured6') : undefined;
    this.probeGate = new ProbeGate({
      ttlMs: config.probeGateTtlMs, log: deps.log, vouched: () => this.#vouched(), write: createVouchWriter(tools, config.capture),
    });
    this.data = new DataPlane(dataPlaneSettings(config), {
      log: deps.log,
      ...(metrics ? { telemetry: metrics } : {}),
      ...(config.sidecar ? {} : { vouchFor: (podIp: string) => this.probeGate.ensure(podIp) }),
    });
    // New certificates, renewals and trust bundles reach the data plane in the next snapshot (one for
    // a burst: a new bundle changes every identity in one turn).
    certs.on('change', () => this.#schedulePublish());
    metrics?.readFrom({
      certificates: () => certs.states().flatMap((c) => (c.state === 'available' ? [{ spiffeId: c.spiffeId, notAfter: c.notAfter }] : [])),
      pool: () => this.data.gauges().sessions,
      openConnections: () => this.data.gauges().openConnections,
      ejectedEndpoints: () => this.data.gauges().ejectedEndpoints,
      refusedAddresses: () => this.registry.snapshot?.refused ?? [],
      tunnelQueuedBytes: () => this.data.gauges().tunnelQueuedBytes,
    });
    this.readiness.add({ name: 'capture', done: () => this.#captureInstalled });
    this.readiness.add({ name: 'workloads-synced', done: () => this.registry.synced && this.#ipsetSynced });
    this.readiness.add({ name: 'certificates', done: () => this.certs.allReady });
    this.readiness.add({ name: 'listening', done: () => this.#dataListening });
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
    deps.log.info(malloc, malloc.applied ? 'malloc tuned' : 'malloc not tuned');
    // First, while this process is small: the shell that runs every capture tool from now on.
    const tools = CaptureTools.throughShells();
    const source = deps.source ?? await workloadSource(config.workloads, deps.log);
    let agent: Agent | undefined;
    const provider = await identityProvider(config, deps.log, () => agent?.registry.trustDomain ?? '');
    const certs = new CertificateManager({ provider, log: deps.log });
    const metrics = config.metrics ? new MeshMetrics() : undefined;
    agent = new Agent(config, { log: deps.log, source }, certs, provider, metrics, tools);
    await agent.#checkCapture();
    await source.start({
      onSnapshot: (s) => agent.#apply(s),
      onError: (err) => agent.#log.error({ err: err.message }, 'workload source rejected an update; the last good registry stays in force'),
    });
    await agent.#listenControl();
    agent.#startWhenReady();
    // A sidecar shares its pod's fate already: kubelet probes the pod, the gate has nothing to add.
    if (!config.sidecar) agent.probeGate.start();
    return agent;
  }

  /**
   * The pods this agent can serve right now, which the probe gate lets the node (kubelet) reach:
   * local and captured, with a certificate, while the data ports are open (or opening) and capture
   * is in place.
   */
  #vouched(): string[] {
    if (!this.#vouching || this.#closing || !this.#captureInstalled || !this.#ipsetSynced) return [];
    const pending = new Set(this.certs.pendingIdentities());
    return this.registry.localCaptured().filter((w) => !pending.has(w.spiffeId)).map((w) => w.ip);
  }

  /**
   * Opens the data ports (15001, 15006, 15008) only once capture, registry and certificates are in
   * place. Until then captured connections are refused by the kernel (capture is installed, nobody
   * listens), never half-served; during an upgrade the new agent takes no connection before it can
   * serve it, because SO_REUSEPORT would otherwise hand it some of them at once. Then logs the
   * moment the agent is ready (an upgrade waits for that line, not for a shared port).
   */
  #startWhenReady(): void {
    const started = Date.now();
    let opening = false;
    const timer = setInterval(() => {
      if (this.#closing || opening) return;
      if (!this.#dataListening) {
        const waiting = this.readiness.pending().filter((t) => t !== 'listening');
        // One workload whose certificate never comes must not keep the node's other pods off the
        // mesh for ever: after a while the agent listens anyway (that pod's connections are
        // refused with no_certificate; the agent stays not ready).
        const certsOverdue = waiting.length === 1 && waiting[0] === 'certificates' && Date.now() - started > LISTEN_ANYWAY_MS;
        if (waiting.length > 0 && !certsOverdue) return;
        if (certsOverdue) this.#log.warn({ afterMs: Date.now() - started }, 'certificates still missing: listening anyway');
        opening = true;
        // Vouch for the pods before the first connection can arrive: the agent's own deliveries to
        // them pass the same gate as kubelet's probes.
        this.#vouching = true;
        const vouched = this.config.sidecar ? Promise.resolve() : this.probeGate.refresh();
        vouched.then(() => this.#listenData()).then(
          () => {
            this.#dataListening = true;
            this.#log.info({ ports: this.config.ports }, 'agent listening');
            // From now on, not during start-up: see heap-headroom.ts.
            this.#heapHeadroom ??= keepHeapHeadroom(this.config.heapHeadroomMiB);
          },
          (err: Error) => { this.#vouching = false; this.#log.error({ err: err.message }, 'cannot listen on the data ports; retrying'); },
        ).finally(() => { opening = false; });
        return;
      }
      if (!this.readiness.ready) return;
      clearInterval(timer);
      this.#log.info({ afterMs: Date.now() - started }, 'agent ready');
    }, 50).unref();
    this.#readyTimer = timer;
  }

  async #checkCapture(): Promise<void> {
    if (this.config.sidecar && !hasNetAdmin()) {
      // As with Istio's sidecars: the pod's init step installed capture, the proxy cannot read it.
      if (!this.#captureInstalled) this.#log.info('sidecar without CAP_NET_ADMIN: capture is the init step\'s, not checked');
      this.#captureInstalled = true;
      return;
    }
    try {
      const check = await checkCapture(this.#tools, this.config.capture);
      const installed = check.state !== 'absent';
      if (check.spoofedDrops !== undefined) this.#countSpoofed('route', check.spoofedDrops);
      // New claims on bridge ports show up here, between registry changes.
      await this.#syncBridge(new Set(this.registry.localCaptured().map((w) => w.ip)));
      const bridged = await this.#bridge?.dropped().catch(() => undefined);
      if (bridged !== undefined) this.#countSpoofed('bridge', bridged);
      if (check.state === 'repaired') this.#log.warn('capture rules had changed (reordered or edited): repaired, meshlet\'s jumps first again');
      if (installed !== this.#captureInstalled) this.#log.info({ installed }, 'capture state changed');
      this.#captureInstalled = installed;
      if (!installed) this.#log.warn('capture is not installed on this node (run `meshlet init`); not ready');
    } catch (err) {
      this.#captureInstalled = false;
      this.#log.error({ err: (err as Error).message }, 'cannot read capture state');
    }
    this.#captureTimer = setTimeout(() => void this.#checkCapture(), CAPTURE_RECHECK_MS).unref();
  }

  /**
   * The kernel's count of packets the anti-spoofing rule dropped, read at each capture check: its
   * increase is logged and counted (a rule installed afresh starts again from 0).
   */
  #countSpoofed(rule: 'route' | 'bridge', kernelCount: number): void {
    const seen = this.#spoofedSeen[rule];
    const increase = kernelCount >= seen ? kernelCount - seen : kernelCount;
    this.#spoofedSeen[rule] = kernelCount;
    if (increase === 0) return;
    this.metrics?.spoofedDropped(increase);
    this.#log.warn({ dropped: increase, total: kernelCount, rule },
      rule === 'route'
        ? 'packets with a captured pod\'s address arrived on another interface and were dropped (anti-spoofing)'
        : 'frames with a captured pod\'s address came from another bridge port and were dropped (anti-spoofing)');
  }

  /**
   * Binds this node's captured addresses to their bridge ports (capture/bridge-ports.ts); contests
   * are logged. A failure is logged, once per message: the node keeps the reverse-path check.
   */
  async #syncBridge(local: ReadonlySet<string>): Promise<void> {
    if (!this.#bridge) return;
    let bindings: Bindings;
    try {
      ({ bindings } = await this.#bridge.sync(local));
      this.#bridgeError = undefined;
    } catch (err) {
      const message = (err as Error).message;
      if (message !== this.#bridgeError) this.#log.error({ err: message }, 'cannot bind captured addresses to their bridge ports');
      this.#bridgeError = message;
      return;
    }
    // Each contest is logged when it starts (the check runs every few seconds).
    const contests = JSON.stringify([[...bindings.contested], [...bindings.claimedElsewhere]]);
    if (contests === this.#contestsLogged) return;
    this.#contestsLogged = contests;
    for (const [ip, ports] of bindings.contested) {
      this.#log.warn({ err: 'address_contested', ip, ports }, 'a captured pod\'s address is held behind several bridge ports: bound to none, its frames dropped');
    }
    for (const [ip, ports] of bindings.claimedElsewhere) {
      this.#log.warn({ err: 'address_contested', ip, boundTo: bindings.bound.get(ip), ports }, 'another bridge port claims a captured pod\'s address: its frames are dropped');
    }
  }

  #apply(snapshot: MeshSnapshot): void {
    this.registry.replace(snapshot);
    const local = this.registry.localCaptured();
    this.certs.reconcile(new Set(local.map((w) => w.spiffeId)));
    this.#published.meshGeneration++;
    this.#publish();
    const ips = new Set(local.map((w) => w.ip));
    const ips6 = new Set(local.flatMap((w) => (w.ipv6 ? [w.ipv6] : [])));
    this.#log.info({ workloads: snapshot.workloads.length, localCaptured: local.length }, 'registry updated');
    // Ready only once every set holds the pods: before the IPv6 guard does, a dual-stack pod's IPv6
    // address would be a way around the mesh; before the destinations set does, connections to the
    // mesh would go around the agent.
    const synced = [
      // Bound to their bridge ports before they are captured: never a moment in which a neighbour
      // sending with a new pod's address is taken for it.
      this.#syncBridge(ips).then(() => this.#members.sync(ips)).then((r) => { if (r.added || r.removed) this.#log.info(r, 'captured-pods ipset updated'); }),
      this.#destinations?.sync(this.registry.destinations).then((r) => { if (r.added || r.removed) this.#log.info(r, 'mesh destinations set updated'); }),
      this.#strict?.sync(new Set(this.config.nonTcpToStrict === 'drop' ? local.filter((w) => snapshot.mtls[w.namespace] === 'strict').map((w) => w.ip) : []))
        .then((r) => { if (r.added || r.removed) this.#log.info(r, 'STRICT pods set updated (non-TCP to them dropped)'); }),
      this.#members6?.sync(ips6).then((r) => { if (r.added || r.removed) this.#log.info(r, 'captured-pods IPv6 set updated (the IPv6 guard)'); }),
    ];
    Promise.all(synced).then(
      () => { this.#ipsetSynced = true; },
      (err) => { this.#log.error({ err: (err as Error).message }, 'cannot update the captured-pods sets'); },
    );
  }

  /** The data plane's next snapshot: the registry's mesh and every identity's material, now. */
  #publish(): void {
    const mesh = this.registry.snapshot;
    if (!mesh) return; // nothing to serve before the first mesh (identities come with it)
    const snapshot: DataPlaneSnapshot = {
      generation: ++this.#published.generation,
      meshGeneration: this.#published.meshGeneration,
      mesh,
      identities: this.certs.materials(),
    };
    this.data.apply(snapshot);
  }

  #schedulePublish(): void {
    if (this.#published.scheduled) return;
    this.#published.scheduled = true;
    setImmediate(() => {
      this.#published.scheduled = false;
      this.#publish();
    });
  }

  /** Admin, readiness and metrics: up from the start, so "not ready, waiting for X" can be asked. */
  async #listenControl(): Promise<void> {
    const admin = createAdminServer(
      { '/config_dump': () => this.configDump(), '/logging': () => ({ level: this.#rootLog.level }) },
      { '/logging': (q) => this.#setLogLevel(q.get('level')) },
    );
    const ready = createReadinessServer(this.readiness);
    const metrics = this.metrics;
    const metricsServer = metrics ? createMetricsServer(() => metrics.text()) : undefined;
    // reusePort lets an upgraded agent listen beside this one during a rollout.
    await Promise.all([
      listen(admin, { port: this.config.ports.admin, host: this.config.adminAddress, reusePort: true }),
      listen(ready, { port: this.config.ports.readiness, host: this.config.readinessAddress, reusePort: true }),
      ...(metricsServer ? [listen(metricsServer, { port: this.config.ports.metrics, host: this.config.metricsAddress, reusePort: true })] : []),
    ]);
    this.#servers.push(admin, ready, ...(metricsServer ? [metricsServer] : []));
  }

  async #listenData(): Promise<void> {
    // The identities issued while it waited: in the data plane before the first connection.
    this.#publish();
    await this.data.listen();
  }

  /** POST /logging?level=debug: every logger of the agent, at once, without a restart. */
  #setLogLevel(level: string | null): { level: string; was: string } {
    if (!level || !(LOG_LEVELS as readonly string[]).includes(level)) {
      throw new AdminRequestError(`level must be one of ${LOG_LEVELS.join(', ')}`);
    }
    const was = this.#rootLog.level;
    // Before it applies, on a logger no level silences: a change to `silent` is itself on record.
    this.#adminLog.warn({ to: level, from: was }, 'log level changed through the admin API');
    setLogLevel(this.#rootLog, level as LogLevel);
    return { level, was };
  }

  configDump(): unknown {
    return configDump({
      node: this.config.nodeName,
      mode: this.config.sidecar ? { sidecar: `${this.config.sidecar.namespace}/${this.config.sidecar.name}` } : 'node',
      readiness: this.readiness,
      registry: this.registry,
      workloadSource: { kind: this.config.workloads.kind, ...this.#source.status?.() },
      policy: this.data.policy,
      identityProvider: this.#provider.name,
      probeGate: this.probeGate.status(),
      heap: { headroomMiB: this.config.heapHeadroomMiB, growingPercent: this.#heapHeadroom?.percent() },
      certs: this.certs, balancer: this.data.balancer, pool: this.data.pool, connections: this.data.connections,
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
    this.#closing = true;
    this.readiness.drain();
    // Stop vouching first: without a successor the node's pods fail their probes within the TTL and
    // leave their Services while this agent drains.
    this.probeGate.stop();
    if (this.#captureTimer) clearTimeout(this.#captureTimer);
    if (this.#readyTimer) clearInterval(this.#readyTimer);
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
    this.#heapHeadroom?.stop();
    this.#tools.close();
  }
}

/** The embedded local CA (--ca-dir) or the CA service (--ca-url). */
async function identityProvider(config: AgentConfig, log: Logger, trustDomain: () => string): Promise<CertificateProvider & { close?(): Promise<void> }> {
  const id = config.identity;
  if (id.mode === 'local') {
    const roots = await loadRootSet(new DirRootStore(id.caDir));
    return createLocalCaProvider(roots, { trustDomain, ttlMs: id.certTtlMs });
  }
  // Loaded on demand: undici (the CA client's HTTP client) is RSS that an agent with the embedded CA
  // never uses (bench/README.md, "Measurements behind the code").
  const { createCaClientProvider } = await import('./identity/ca-client.ts');
  return createCaClientProvider({
    url: id.url, tokenFile: id.tokenFile, trustBundleFile: id.trustBundleFile, log,
    bundlePollMs: id.bundlePollMs, requestTimeoutMs: id.requestTimeoutMs,
  });
}

/** The data plane's part of the configuration: what does not change over the agent's life. */
function dataPlaneSettings(config: AgentConfig): DataPlaneSettings {
  return {
    nodeName: config.nodeName,
    ...(config.sidecar ? { sidecar: config.sidecar } : {}),
    ports: { outbound: config.ports.outbound, inboundPlaintext: config.ports.inboundPlaintext, tunnel: config.ports.tunnel },
    agentPorts: Object.values(config.ports),
    connectTimeoutMs: config.connectTimeoutMs,
    handshakeTimeoutMs: config.handshakeTimeoutMs,
    drainMs: config.drainMs,
    idleTimeoutMs: config.idleTimeoutMs,
    preserveSource: config.preserveSourceIp,
    accessLog: config.accessLog,
    limits: {
      maxConnections: config.maxConnections,
      maxPerSource: config.maxConnectionsPerSource,
      maxPendingHandshakes: config.maxPendingHandshakes,
      maxPendingPerSource: config.maxPendingHandshakesPerSource,
      handshakeRate: config.handshakeRate,
    },
    tunnelStallTimeoutMs: config.tunnelStallTimeoutMs,
    tunnelQueueBudgetBytes: config.tunnelQueueBudgetMiB * 1024 * 1024,
  };
}
