// The seam between the agent's control plane and its data plane. The control plane (workload source,
// certificates, capture, admin) publishes a DataPlaneSnapshot; the data plane (listeners, tunnel
// pool and server, relay, delivery) reads only what the snapshots and its settings carry, and
// reports back through DataPlaneTelemetry (telemetry/connections.ts). Everything here is plain data
// (structured-clone safe: no functions, no sockets, no class instances), so the same snapshot can be
// posted to a worker thread that runs a data plane of its own.
import type { PortRange } from '../capture/socket.ts';
import type { MeshSnapshot } from '../workloads/model.ts';

/** The counters several workers share (or one worker's mirror of its part of them). */
export interface SharedCounters { connections: SharedArrayBuffer; pendingHandshakes: SharedArrayBuffer; redirects: SharedArrayBuffer }

/** One identity this node serves: its key and chain, or why there is none yet. */
export type IdentityMaterial =
  | {
    state: 'available';
    spiffeId: string;
    certChainPem: string;
    privateKeyPem: string;
    /** The roots the peers' certificates must chain to. */
    trustBundlePem: string;
    notAfter: number;
    /** Changes whenever the certificate or its bundle does: the data plane rebuilds its TLS context then only. */
    revision: number;
  }
  | { state: 'missing'; spiffeId: string; reason: string };

export interface DataPlaneSnapshot {
  /** Increases with every publish. */
  generation: number;
  /**
   * Increases when `mesh` changes (not when only certificates do): the data plane re-indexes the
   * mesh and decides its open connections again only then.
   */
  meshGeneration: number;
  /** Workloads, Services, policies (as read: matchers are compiled by each data plane) and mTLS modes. */
  mesh: MeshSnapshot;
  /** This node's captured workloads' identities, with the trust bundle. */
  identities: IdentityMaterial[];
}

/** What does not change over an agent's life: given when a data plane is created. */
export interface DataPlaneSettings {
  nodeName: string;
  /** Sidecar mode: the one workload served; otherwise every captured workload of the node. */
  sidecar?: { namespace: string; name: string };
  ports: { outbound: number; inboundPlaintext: number; tunnel: number };
  /** Every port of the agent's own: a tunnel never connects to them (no loops, no admin API from the network). */
  agentPorts: number[];
  connectTimeoutMs: number;
  handshakeTimeoutMs: number;
  drainMs: number;
  idleTimeoutMs: number;
  /** Deliveries to local pods from the source's address, on a port of `sourcePorts`; or not. */
  preserveSource: { sourcePorts: PortRange } | false;
  /** Whether access-log lines are written (one per connection). */
  accessLog: boolean;
  limits: {
    maxConnections: number;
    maxPerSource: number;
    maxPendingHandshakes: number;
    maxPendingPerSource: number;
    handshakeRate: number;
  };
  tunnelStallTimeoutMs: number;
  tunnelQueueBudgetBytes: number;
  /** Tunnel data relayed in new buffers between two young collections of the thread (young-collection.ts); 0: never. */
  youngCollectionBytes: number;
  /**
   * With several workers: memory they share (shared-slots.ts), where the connection and pending
   * handshake slots are counted, so the limits above hold for the node, and the open redirected
   * connections (redirects.ts). Shared, not copied, by a post.
   */
  sharedSlots?: SharedCounters;
  /** This worker's mirror of what it added to `sharedSlots` (shared-cells.ts): given back if it dies. */
  ownSlots?: SharedCounters;
}
