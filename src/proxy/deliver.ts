// Delivery: TCP to a final destination, and to a pod of this node through the probe gate, from the
// source's own address when the agent preserves sources.
import type net from 'node:net';
import { SelfCallError, UpstreamConnectError } from '../errors.ts';
import type { SocketAddress } from '../capture/socket.ts';
import { openTransparentSocket, plainIp } from '../capture/socket.ts';
import type { ProxyContext } from './context.ts';
import { LogThrottle } from '../rate-limit.ts';
import { pooledConnect, pooledSocketOnFd } from './read-buffers.ts';

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
  const vouching = ctx.vouchFor(podIp);
  if (vouching) await vouching;
  return connectFromSource(ctx, podIp, port, source);
}

/** A connection to `podIp` from `source`'s address when the agent preserves sources and one is known. */
export async function connectFromSource(ctx: ProxyContext, podIp: string, port: number, source?: DeliverySource): Promise<net.Socket> {
  const preserve = ctx.preserveSource;
  if (!preserve || !source?.ip || source.ip === podIp) return connectTcp(podIp, port, ctx.connectTimeoutMs);
  const taken = (p: number) => ctx.redirects.has(source.ip, p, podIp, port);
  // The port openTransparentSocket picked may already carry this very 4-tuple (an open connection,
  // or one in TIME_WAIT): connect() then fails at once with EADDRNOTAVAIL, and another port will do.
  for (let attempt = 1; ; attempt++) {
    const fd = openTransparentSocket(source.ip, preserve.sourcePorts, taken);
    try {
      return await connectTcp(podIp, port, ctx.connectTimeoutMs, fd);
    } catch (err) {
      if (attempt >= SOURCE_PORT_TRIES || (err as { cause?: { code?: string } }).cause?.code !== 'EADDRNOTAVAIL') throw err;
    }
  }
}

/** Pods whose own ports lie in --source-ports, each said once a minute. */
const overlapping = new LogThrottle(60_000);

/**
 * Records a captured pod's redirected connection as open (its release comes back). One whose
 * source port lies in the range deliveries take theirs from comes from a pod whose kernel picks
 * from that range too (it widened ip_local_port_range): a delivery from its address may then share
 * a 4-tuple with one of its connections, which hangs (capture/socket.ts openTransparentSocket). The
 * operator, who can move either range, is told once a minute per pod.
 */
export function holdRedirect(ctx: ProxyContext, srcIp: string, srcPort: number, dst: SocketAddress): () => void {
  const range = ctx.preserveSource ? ctx.preserveSource.sourcePorts : undefined;
  if (range && srcPort >= range[0] && srcPort <= range[1] && overlapping.ready(srcIp)) {
    ctx.log.warn({ source: srcIp, sourcePort: srcPort, sourcePorts: `${range[0]}-${range[1]}` },
      'a pod picks source ports in --source-ports: a delivery from its address may hang on a shared 4-tuple; move --source-ports or its ip_local_port_range apart');
  }
  return ctx.redirects.add(srcIp, srcPort, dst.ip, dst.port);
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
