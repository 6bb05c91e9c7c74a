import type net from 'node:net';
import type { Logger } from 'pino';
import type { CertificateManager } from '../identity/certs.ts';
import type { PolicyEngine } from '../policy/hook.ts';
import type { ConnectionTracker } from '../telemetry/connections.ts';
import type { WorkloadRegistry } from '../workloads/registry.ts';
import { SelfCallError, UpstreamConnectError } from '../errors.ts';
import type { SocketAddress } from '../capture/socket.ts';
import { openTransparentSocket, plainIp } from '../capture/socket.ts';
import type { TunnelPool } from './tunnel/pool.ts';
import type { StallWatch } from './tunnel/stall-watch.ts';
import type { EndpointBalancer } from './balancer.ts';
import type { OpenRedirects } from './redirects.ts';
import { pooledConnect, pooledSocketOnFd } from './read-buffers.ts';

/** Everything a connection handler needs, passed explicitly (no module state). */
export interface ProxyContext {
  registry: WorkloadRegistry;
  certs: Pick<CertificateManager, 'assertAvailable' | 'secureContextFor'>;
  policy: PolicyEngine;
  pool: TunnelPool;
  /** Resets tunnel sessions whose peer stopped reading (the pool's and the tunnel server's). */
  stalls: StallWatch;
  /** Endpoint choice and outlier state for connections to Services' cluster IPs. */
  balancer?: EndpointBalancer;
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
  idleTimeoutMs?: number;
  /** The agent's own ports: a tunnel never connects to them (no loops, no admin API from the network). */
  agentPorts?: ReadonlySet<number>;
  /** Connection limits: false means the socket was refused (and already reset). */
  admit?(socket: net.Socket): boolean;
  /**
   * The tunnel port's budget for sockets still in their mTLS handshake (and the handshake rate per
   * source): the release function once the handshake is done, or undefined when refused (reset).
   */
  admitHandshake?(socket: net.Socket): (() => void) | undefined;
  /**
   * Resolves once the probe gate lets this node reach `podIp` (the agent's own deliveries pass the
   * same gate as kubelet's probes); undefined when it already does (no await on the hot path).
   */
  vouchFor?(podIp: string): Promise<void> | undefined;
  /** Connection limits for a tunnel stream of `peerId`: the release function, or ConnectionLimitError. */
  admitStream?(peerId: string): () => void;
  /**
   * Deliveries to local pods come from the source's own address (a transparent socket), so the
   * application sees its real client and not the node. Needs `meshlet init`'s mangle rule and
   * policy route, which bring the pod's replies back to the agent.
   */
  preserveSource?: boolean;
  /** The redirected connections open on this agent, whose 4-tuples a delivery must not reuse. */
  redirects?: OpenRedirects;
  /**
   * A destination outside the mesh: `refuse` for a node agent (its connection would leave as the
   * node, with the node's reach), `dial` for a sidecar (it dials from inside its pod, as the pod).
   */
  outsideMesh: 'refuse' | 'dial';
}

/** Who a delivery to a local pod speaks for: the source address to keep. */
export interface DeliverySource {
  ip: string;
}

/**
 * A TCP connection to a final destination, resolved once established (never half-set-up), reading
 * into reused buffers (read-buffers.ts). `fd`: an unconnected socket to connect it from (a
 * transparent one bound to a source address).
 */
export function connectTcp(host: string, port: number, timeoutMs: number, fd?: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = fd === undefined ? pooledConnect(host, port) : pooledSocketOnFd(fd).setNoDelay(true).connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new UpstreamConnectError(`${host}:${port}`, `timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    const onError = (err: Error) => {
      clearTimeout(timer);
      reject(new UpstreamConnectError(`${host}:${port}`, err));
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

/**
 * A connection to a pod of this node: through the probe gate, which must vouch for the pod first;
 * from `source`'s address when the agent preserves sources and one is known.
 */
export async function connectLocalPod(ctx: ProxyContext, podIp: string, port: number, source?: DeliverySource): Promise<net.Socket> {
  const vouching = ctx.vouchFor?.(podIp);
  if (vouching) await vouching;
  if (!ctx.preserveSource || !source?.ip || source.ip === podIp) return connectTcp(podIp, port, ctx.connectTimeoutMs);
  const redirects = ctx.redirects;
  const taken = redirects ? (p: number) => redirects.has(source.ip, p, podIp, port) : undefined;
  // The port openTransparentSocket picked may already carry this very 4-tuple (an open connection,
  // or one in TIME_WAIT): connect() then fails at once with EADDRNOTAVAIL, and another port will do.
  for (let attempt = 1; ; attempt++) {
    const fd = openTransparentSocket(source.ip, taken);
    try {
      return await connectTcp(podIp, port, ctx.connectTimeoutMs, fd);
    } catch (err) {
      if (attempt >= SOURCE_PORT_TRIES || (err as { cause?: { code?: string } }).cause?.code !== 'EADDRNOTAVAIL') throw err;
    }
  }
}

/** How many source ports a delivery tries when each is busy with its own 4-tuple. */
const SOURCE_PORT_TRIES = 16;

/**
 * A connection made straight to an agent port (not redirected) reports the agent itself as its
 * original destination; relaying it would loop back into the agent.
 */
export function assertNotSelf(dst: SocketAddress, socket: net.Socket): void {
  if (dst.ip === plainIp(socket.localAddress) && dst.port === socket.localPort) {
    throw new SelfCallError(`${dst.ip}:${dst.port}`);
  }
}
