import type net from 'node:net';
import type { Logger } from 'pino';
import type { PolicyEngine } from '../policy/hook.ts';
import type { ConnectionTracker } from '../telemetry/connections.ts';
import type { WorkloadRegistry } from '../workloads/registry.ts';
import type { PortRange, SocketAddress } from '../capture/socket.ts';
import type { IdentityView } from './identities.ts';
import type { TunnelPool } from './tunnel/pool.ts';
import type { StallWatch } from './tunnel/stall-watch.ts';
import type { EndpointBalancer } from './balancer.ts';
import type { OpenRedirects } from './redirects.ts';

/**
 * Everything a connection handler needs, passed explicitly (no module state); DataPlane builds it
 * (data-plane.ts). Every field is required: a safety feature (limits, 4-tuple avoidance, the probe
 * gate) is never off because a caller forgot it. Tests build one with test/support/proxy-context.ts.
 */
export interface ProxyContext {
  /** The data plane's own index of the mesh, replaced by each snapshot. */
  registry: WorkloadRegistry;
  /**
   * Where a redirected connection was going: SO_ORIGINAL_DST for the agent (capture/socket.ts);
   * injected by in-process tests, which connect straight to the listeners.
   */
  originalDestination(socket: net.Socket): SocketAddress;
  /** The identities this node presents, from the snapshots' material. */
  certs: IdentityView;
  policy: PolicyEngine;
  pool: TunnelPool;
  /** Resets tunnel sessions whose peer stopped reading (the pool's and the tunnel server's). */
  stalls: StallWatch;
  /** Endpoint choice and outlier state for connections to Services' cluster IPs. */
  balancer: EndpointBalancer;
  connections: ConnectionTracker;
  log: Logger;
  tunnelPort: number;
  connectTimeoutMs: number;
  handshakeTimeoutMs: number;
  /**
   * How long a retired tunnel session (its certificate expired, its root left the trust bundle) may
   * finish its streams after GOAWAY before it is destroyed (--drain).
   */
  drainMs: number;
  /** A relayed connection with no bytes either way for this long is reset (0: never). */
  idleTimeoutMs: number;
  /** The agent's own ports: a tunnel never connects to them (no loops, no admin API from the network). */
  agentPorts: ReadonlySet<number>;
  /** Connection limits: false means the socket was refused (and already reset). */
  admit(socket: net.Socket): boolean;
  /**
   * The tunnel port's budget for sockets still in their mTLS handshake (and the handshake rate per
   * source): the release function once the handshake is done, or undefined when refused (reset).
   */
  admitHandshake(socket: net.Socket): (() => void) | undefined;
  /**
   * Resolves once the probe gate lets this node reach `podIp` (the agent's own deliveries pass the
   * same gate as kubelet's probes); undefined when it already does (no await on the hot path), and
   * always for a sidecar, which has no gate.
   */
  vouchFor(podIp: string): Promise<void> | undefined;
  /** Connection limits for a tunnel stream of `peerId`: the release function, or ConnectionLimitError. */
  admitStream(peerId: string): () => void;
  /**
   * Deliveries to local pods come from the source's own address (a transparent socket), so the
   * application sees its real client and not the node. Needs `meshlet init`'s mangle rule and
   * policy route, which bring the pod's replies back to the agent. `sourcePorts`: where the
   * delivery's port is picked, outside the pods' own (capture/socket.ts openTransparentSocket).
   */
  preserveSource: { sourcePorts: PortRange } | false;
  /** The redirected connections open on this agent, whose 4-tuples a delivery must not reuse. */
  redirects: OpenRedirects;
  /**
   * A destination outside the mesh: `refuse` for a node agent (its connection would leave as the
   * node, with the node's reach), `dial` for a sidecar (it dials from inside its pod, as the pod).
   */
  outsideMesh: 'refuse' | 'dial';
}
