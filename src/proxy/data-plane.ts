// The data plane: the three listeners, the tunnel pool and server, relay and delivery, built in one
// place from its settings and fed only by snapshots (snapshot.ts). It keeps its own mesh index,
// compiled policies and TLS contexts, and never reaches into the control plane: what it needs from
// the node (the original destination, the probe gate) comes in as functions, what it counts goes
// out through DataPlaneTelemetry.
import net from 'node:net';
import type { Logger } from 'pino';
import { originalDestination as soOriginalDst, resetSocket, sendProgress, type SocketAddress } from '../capture/socket.ts';
import { ConnectionLimitError } from '../errors.ts';
import { MeshPolicyEngine } from '../policy/engine.ts';
import { accessLogger, createLogger } from '../telemetry/log.ts';
import { ConnectionTracker, type DataPlaneTelemetry } from '../telemetry/connections.ts';
import { WorkloadRegistry } from '../workloads/registry.ts';
import { EndpointBalancer } from './balancer.ts';
import type { ProxyContext } from './context.ts';
import { Identities } from './identities.ts';
import { ConnectionLimiter, HandshakeGate } from './limits.ts';
import { createDataListeners, type DataListeners, listen } from './listeners.ts';
import { OpenRedirects } from './redirects.ts';
import { SharedSlotCounts } from './shared-slots.ts';
import type { WorkerShares } from './host.ts';
import type { DataPlaneSettings, DataPlaneSnapshot } from './snapshot.ts';
import { TunnelPool } from './tunnel/pool.ts';
import { StallWatch } from './tunnel/stall-watch.ts';
import type { DataPlaneDump, DataPlaneGauges } from './view.ts';
import { freshChunks } from './young-collection.ts';

/** How often tunnel send queues are read for stalls (a few FFI calls per session). */
const STALL_CHECK_MS = 1_000;

export interface DataPlaneDeps {
  log: Logger;
  telemetry?: DataPlaneTelemetry;
  /**
   * Resolves once the probe gate lets this node reach `podIp` (capture/probe-gate.ts), or undefined
   * when it already does; a sidecar has no gate.
   */
  vouchFor?(podIp: string): Promise<void> | undefined;
  /** Where a redirected connection was going: SO_ORIGINAL_DST unless a test injects it. */
  originalDestination?(socket: net.Socket): SocketAddress;
  /** The stall watch's socket probes (tests that are not about stalls pass inert ones). */
  stallProbe?: Pick<ConstructorParameters<typeof StallWatch>[0], 'probe' | 'reset'>;
  now?(): number;
}

export class DataPlane {
  readonly settings: DataPlaneSettings;
  readonly registry: WorkloadRegistry;
  readonly identities: Identities;
  readonly policy: MeshPolicyEngine;
  readonly connections: ConnectionTracker;
  readonly stalls: StallWatch;
  readonly pool: TunnelPool;
  readonly balancer: EndpointBalancer;
  readonly ctx: ProxyContext;
  readonly listeners: DataListeners;
  readonly #log: Logger;
  readonly #limiter: ConnectionLimiter;
  #handshakes: HandshakeGate | undefined;
  readonly #sockets = new Set<net.Socket>();
  readonly #listening: net.Server[] = [];
  #closing = false;
  #opening: Promise<void> | undefined;
  #meshGeneration = -1;
  #generation = -1;

  constructor(settings: DataPlaneSettings, deps: DataPlaneDeps) {
    const { log, telemetry } = deps;
    this.settings = settings;
    freshChunks.setEvery(settings.youngCollectionBytes);
    this.#log = log.child({ component: 'agent', node: settings.nodeName });
    this.registry = new WorkloadRegistry(settings.nodeName, settings.sidecar);
    this.identities = new Identities(deps.now);
    this.policy = new MeshPolicyEngine({ log, ...(telemetry ? { onDecision: (action, p) => telemetry.decision(action, p) } : {}) });
    // Access lines off: a logger of its own at silent, out of reach of runtime level changes.
    this.connections = new ConnectionTracker(settings.accessLog ? accessLogger(log) : createLogger('silent'), telemetry);
    this.stalls = new StallWatch({
      stallMs: settings.tunnelStallTimeoutMs,
      budgetBytes: settings.tunnelQueueBudgetBytes,
      intervalMs: STALL_CHECK_MS,
      probe: deps.stallProbe?.probe ?? sendProgress,
      reset: deps.stallProbe?.reset ?? resetSocket,
      onStall: (reason, peer, queuedBytes) => {
        this.#log.warn({ err: 'tunnel_stalled', reason, peer, queuedBytes }, 'tunnel session reset: its peer stopped reading');
        telemetry?.tunnelStalled(reason);
      },
    });
    this.pool = new TunnelPool({
      stalls: this.stalls,
      tunnelPort: settings.ports.tunnel,
      connectTimeoutMs: settings.connectTimeoutMs,
      log,
      secureContextFor: (id) => this.identities.secureContextFor(id),
      drainMs: settings.drainMs,
      ...(telemetry ? { onHandshake: (seconds: number, ok: boolean) => telemetry.handshake(seconds, ok) } : {}),
    });
    this.balancer = new EndpointBalancer({
      onEject: (service, endpoint, forMs, lastError) => {
        this.#log.warn({ service: `${service.namespace}/${service.name}`, endpoint: endpoint.ip, forMs, lastError }, 'service endpoint ejected after consecutive failures');
        telemetry?.endpointEjected(service.namespace, service.name);
      },
    });
    const shared = settings.sharedSlots;
    this.#limiter = new ConnectionLimiter(
      { maxConnections: settings.limits.maxConnections, maxPerSource: settings.limits.maxPerSource },
      shared ? new SharedSlotCounts(shared.connections, { own: settings.ownSlots?.connections }) : undefined,
    );
    this.ctx = this.#context(deps);
    this.listeners = createDataListeners(this.ctx, {
      admit: (socket, reporter) => this.#admit(socket, reporter),
      track: (socket) => {
        this.#sockets.add(socket);
        socket.once('close', () => this.#sockets.delete(socket));
      },
    });
  }

  /** Takes a snapshot: the mesh (when it changed) before the identities, then the re-checks. */
  apply(snapshot: DataPlaneSnapshot): void {
    if (snapshot.generation <= this.#generation) return;
    this.#generation = snapshot.generation;
    const meshChanged = snapshot.meshGeneration !== this.#meshGeneration;
    if (meshChanged) {
      this.#meshGeneration = snapshot.meshGeneration;
      // Policies first: the first connection that sees a new workload also sees its snapshot's policies.
      this.policy.update(snapshot.mesh);
      this.registry.replace(snapshot.mesh);
    }
    const { bundleChanged } = this.identities.update(snapshot.identities);
    if (meshChanged) {
      // Open connections follow the decisions: each is decided again, and those now refused end.
      const ended = this.connections.recheck();
      if (ended > 0) this.#log.info({ ended }, 'open connections refused after a change were closed');
      this.balancer.prune(snapshot.mesh.services);
      this.listeners.tunnel.prune();
    }
    // A root that leaves the trust bundle takes the tunnel sessions that rest on it along.
    if (bundleChanged) {
      const retired = this.listeners.tunnel.recheckRoots() + this.pool.recheckRoots((id) => this.identities.rootsOf(id));
      if (retired > 0) this.#log.info({ retired }, 'trust bundle changed: tunnel sessions resting on a removed root retired');
    }
  }

  /** This data plane's share of what is split among those serving (host.ts workerShares). */
  reshare(shares: WorkerShares): void {
    this.#handshakes?.setRate(shares.handshakeRate);
    this.stalls.setBudget(shares.tunnelQueueBudgetBytes);
  }

  /** What the metrics gauges read, now. */
  gauges(): DataPlaneGauges {
    return {
      pools: this.pool.dump(),
      openConnections: this.connections.openByDirection(),
      ejected: this.balancer.ejected(),
      tunnelQueuedBytes: this.stalls.queuedBytes,
    };
  }

  /** The data plane's part of /config_dump, now. */
  dump(): DataPlaneDump {
    const services = this.registry.snapshot?.services ?? [];
    return {
      ...this.gauges(),
      policy: this.policy.dump(),
      endpoints: Object.fromEntries(services.map((s) => [`${s.namespace}/${s.name}`, this.balancer.view(s)])),
      connections: { totals: this.connections.totals, open: this.connections.list() },
    };
  }

  /**
   * Opens 15001, 15006 and 15008 on every address (REDIRECT rewrites the destination to the
   * receiving interface's address), with SO_REUSEPORT so an upgraded agent can listen beside this one.
   * Once: asked again (the agent retries when another data plane could not bind), it answers with
   * the same opening, or tries again after a failed one.
   */
  listen(): Promise<void> {
    this.#opening ??= this.#open().catch((err: unknown) => { this.#opening = undefined; throw err; });
    return this.#opening;
  }

  async #open(): Promise<void> {
    const { outbound, inboundPlaintext, tunnel } = this.listeners;
    const servers = [outbound, inboundPlaintext, tunnel.listener];
    const ports = [this.settings.ports.outbound, this.settings.ports.inboundPlaintext, this.settings.ports.tunnel];
    try {
      await Promise.all(servers.map((s, i) => listen(s, { port: ports[i]!, host: '0.0.0.0', reusePort: true })));
    } catch (err) {
      for (const s of servers) if (s.listening) s.close();
      throw err;
    }
    // Closed while binding: the ports do not stay open behind the shutdown.
    if (this.#closing) {
      for (const s of servers) s.close();
      throw new Error('data plane closed while it was opening its ports');
    }
    this.#listening.push(...servers);
  }

  /**
   * Stops accepting, tells tunnel peers to go away (GOAWAY), lets open connections finish until
   * `drainUntil()` (read again as it waits: a destroy moves it to now), then resets what is left.
   */
  async close(drainUntil: () => number): Promise<void> {
    this.#closing = true;
    const closed = Promise.all(this.#listening.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    await this.pool.close();
    this.listeners.tunnel.close();
    while (this.#sockets.size > 0 && Date.now() < drainUntil()) await new Promise((r) => setTimeout(r, 50));
    for (const s of this.#sockets) s.destroy();
    this.pool.destroy();
    this.stalls.close();
    await closed;
  }

  #admit(socket: net.Socket, reporter: 'source' | 'destination'): boolean {
    return this.#limiter.admit(socket, (source, reason, logIt) => {
      if (logIt) this.#log.warn({ err: 'connection_limit', source, reason }, 'connection refused by the connection limits');
      this.connections.refused(reporter, 'connection_limit');
    });
  }

  #context(deps: DataPlaneDeps): ProxyContext {
    const s = this.settings;
    const limiter = this.#limiter;
    const handshakes = this.#handshakes = new HandshakeGate({
      maxPending: s.limits.maxPendingHandshakes, maxPendingPerSource: s.limits.maxPendingPerSource, ratePerSecond: s.limits.handshakeRate,
      ...(s.sharedSlots ? { counts: new SharedSlotCounts(s.sharedSlots.pendingHandshakes, { own: s.ownSlots?.pendingHandshakes }) } : {}),
    });
    return {
      admit: (socket) => this.#admit(socket, 'destination'),
      admitHandshake: (socket) => handshakes.admit(socket, (code, source, reason) => {
        if (reason) this.#log.warn({ err: code, source, reason }, 'connection refused by the connection limits');
        this.connections.refused('destination', code);
      }),
      vouchFor: deps.vouchFor ?? (() => undefined),
      originalDestination: deps.originalDestination ?? soOriginalDst,
      admitStream: (peerId) => {
        const slot = limiter.acquire(peerId);
        if ('refused' in slot) {
          if (slot.log) this.#log.warn({ err: 'connection_limit', source: peerId, reason: slot.refused }, 'tunnel stream refused by the connection limits');
          throw new ConnectionLimitError(slot.refused);
        }
        return slot.release;
      },
      agentPorts: new Set(s.agentPorts),
      preserveSource: s.preserveSource,
      redirects: new OpenRedirects(s.sharedSlots?.redirects, s.ownSlots?.redirects),
      // A node agent's connection outside the mesh would leave as the node; a sidecar's leaves as its pod.
      outsideMesh: s.sidecar ? 'dial' : 'refuse',
      drainMs: s.drainMs,
      registry: this.registry,
      certs: this.identities,
      policy: this.policy,
      pool: this.pool,
      stalls: this.stalls,
      balancer: this.balancer,
      connections: this.connections,
      log: deps.log,
      tunnelPort: s.ports.tunnel,
      connectTimeoutMs: s.connectTimeoutMs,
      handshakeTimeoutMs: s.handshakeTimeoutMs,
      idleTimeoutMs: s.idleTimeoutMs,
    };
  }
}
