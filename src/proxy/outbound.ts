// Port 15001: everything a captured pod on this node sends. One connection, one straight line:
// who sent it, where it was going (a Service's cluster IP is resolved to one of its endpoints
// first), which route, relay.
import type { Socket } from 'node:net';
import { plainIp, type SocketAddress } from '../capture/socket.ts';
import { NoEndpointsError, OutsideMeshError, PeerIdentityError, TunnelRejectedError, UnknownSourceError, UpstreamConnectError } from '../errors.ts';
import type { ConnectionHandle } from '../telemetry/connections.ts';
import type { MeshService, ServicePort, Workload } from '../workloads/model.ts';
import type { EndpointLease } from './balancer.ts';
import type { ProxyContext } from './context.ts';
import { assertNotSelf, connectFromSource, connectLocalPod, connectTcp, holdRedirect } from './deliver.ts';
import { refusedAtConnect } from './tunnel/h2.ts';
import { h2StreamEnd, relayConnection, socketEnd, type RelayEnd } from './relay.ts';
import { current, enforce, enforceAndGuard } from './decision.ts';

/** Endpoints one connection to a Service may try before it gives up (all before any byte). */
export const SERVICE_ATTEMPTS = 3;

export async function handleOutbound(socket: Socket, ctx: ProxyContext): Promise<void> {
  const conn = ctx.connections.open('outbound', plainIp(socket.remoteAddress));
  const client = socketEnd(socket);
  let lease: EndpointLease | undefined;
  let unregister: (() => void) | undefined;
  try {
    const source = findLocalSource(socket, ctx);
    conn.set({ src: source });
    const dst = ctx.originalDestination(socket);
    assertNotSelf(dst, socket);
    unregister = holdRedirect(ctx, source.ip, socket.remotePort ?? 0, dst);
    conn.set({ destination: `${dst.ip}:${dst.port}` });
    const service = ctx.registry.findService(dst.ip, dst.port);
    let upstream: RelayEnd;
    if (service) ({ end: upstream, lease } = await connectService(source, service.service, service.port, ctx, conn));
    else upstream = await connectDestination(source, dst, ctx, conn);
    await relayConnection(conn, client, upstream, ctx.idleTimeoutMs);
  } catch (err) {
    client.reset();
    conn.close({ error: err });
  } finally {
    lease?.release();
    unregister?.();
  }
}

/** The sender must be a captured workload of this node; anything else is never forwarded. */
function findLocalSource(socket: Socket, ctx: ProxyContext): Workload {
  const ip = plainIp(socket.remoteAddress);
  const source = ctx.registry.findWorkload(ip);
  if (!source || !source.captured || !ctx.registry.isLocal(source)) throw new UnknownSourceError(ip);
  return source;
}

/**
 * The ambassador's part: one endpoint of the Service, then the same path as a connection made to
 * that pod. A failure before any byte flowed (refused, timed out, tunnel rejected by the peer agent
 * or its pod) is the endpoint's: counted towards its ejection, and another endpoint is tried. A
 * refusal by policy or for want of a certificate would be the same anywhere and is final.
 */
async function connectService(source: Workload, service: MeshService, port: ServicePort, ctx: ProxyContext, conn: ConnectionHandle): Promise<{ end: RelayEnd; lease: EndpointLease }> {
  conn.set({ service });
  const balancer = ctx.balancer;
  const name = `${service.namespace}/${service.name}`;
  const tried = new Set<string>();
  let last: unknown;
  for (let attempt = 1; attempt <= SERVICE_ATTEMPTS; attempt++) {
    const endpoint = balancer.pick(service, port.name, ctx.registry.nodeName, tried);
    if (!endpoint) break;
    tried.add(endpoint.ip);
    const target = { ip: endpoint.ip, port: endpoint.ports[port.name] as number };
    const lease = balancer.lease(service, endpoint);
    conn.set({ destination: `${target.ip}:${target.port}`, attempts: attempt, dst: undefined, route: undefined, mutualTls: false, alsoDestination: false });
    try {
      const end = await connectDestination(source, target, ctx, conn);
      lease.success();
      return { end, lease };
    } catch (err) {
      lease.release();
      if (!isEndpointFailure(err)) throw err;
      lease.failure(err);
      last = err;
      ctx.log.debug({ component: 'outbound', service: name, endpoint: target, attempt, err: (err as Error).message }, 'service endpoint failed before any byte; trying another');
    }
  }
  const why = last instanceof Error ? `${tried.size} endpoint(s) tried, last: ${last.message}` : 'no ready endpoint serves this port';
  throw new NoEndpointsError(name, port.port, why);
}

function isEndpointFailure(err: unknown): boolean {
  if (err instanceof UpstreamConnectError || err instanceof PeerIdentityError) return true;
  // No status: the tunnel could not be opened (connect, handshake, timeout). 5xx: the peer agent
  // could not reach its pod or was at its limits. 4xx are decisions (policy, bad target): final.
  return err instanceof TunnelRejectedError && (err.status === undefined || err.status >= 500);
}

async function connectDestination(source: Workload, dst: Pick<SocketAddress, 'ip' | 'port'>, ctx: ProxyContext, conn: ConnectionHandle): Promise<RelayEnd> {
  const found = ctx.registry.findWorkload(dst.ip);
  // Redirected for a pod released a moment ago (capture's set not yet caught up): still tunnelled.
  const target = found?.captured ? found : ctx.registry.departed(dst.ip);
  if (!target) {
    // A node agent's connection would leave as the node (its address, its firewall holes, the cloud
    // metadata service): capture sends it only destinations in the mesh, and any other that gets
    // here (it left the mesh longer ago than DEPARTED_MS) is refused. A sidecar dials from inside its pod: plain TCP, as
    // the pod itself would, if policy allows leaving the mesh.
    if (ctx.outsideMesh === 'refuse') {
      if (ctx.registry.inPodRanges(dst.ip)) return connectUnknownPod(source, dst, ctx, conn);
      throw new OutsideMeshError(`${dst.ip}:${dst.port}`);
    }
    conn.set({ route: 'passthrough' });
    enforce(conn, ctx.policy.allowPassthrough(source, dst.ip, dst.port));
    return socketEnd(await connectTcp(dst.ip, dst.port, ctx.connectTimeoutMs));
  }
  conn.set({ dst: target });
  // No certificate, no traffic: a source without a valid certificate never reaches the mesh.
  ctx.certs.assertAvailable(source.spiffeId);

  if (ctx.registry.isLocal(target)) {
    // Same node: no network hop and no TLS, but the same decisions as if the bytes had crossed a
    // tunnel, so a policy holds whether or not the two pods happen to share a node.
    // Both ends' identities are the agent's own: mutual TLS in effect, reported for both sides.
    conn.set({ route: 'local', mutualTls: true, alsoDestination: true });
    ctx.certs.assertAvailable(target.spiffeId);
    enforceAndGuard(conn, () => {
      const [s, t] = [current(ctx.registry, source), current(ctx.registry, target)];
      return ctx.policy.authorize({ sourcePrincipal: s.spiffeId, sourceIp: s.ip, sourceNamespace: s.namespace, destination: t, destinationPort: dst.port });
    });
    return socketEnd(await connectLocalPod(ctx, dst.ip, dst.port, { ip: source.ip }));
  }

  // Another node: the destination agent enforces policy with the identity it verified.
  conn.set({ route: 'tunnel', mutualTls: true });
  const stream = await ctx.pool.connect(source.spiffeId, {
    podIp: target.ip, port: dst.port, expectedPeerId: target.spiffeId, sourceIp: source.ip, traceId: conn.info.traceId,
  });
  // The connection that opened a session caused its handshake (telemetry/overhead.ts).
  if (ctx.pool.streamInfo(stream).openedSession) conn.set({ handshakes: 1 });
  return h2StreamEnd(stream);
}

/**
 * The controller-away rule (docs/scale.md): with other nodes' pods from the address slices, capture
 * also sends the agent what a captured pod sends into the pod ranges, and an address there that the
 * table does not know is a pod it has not heard of yet. It goes through a tunnel to that address,
 * whose node's agent answers for it if it captures it: the identity it presents (one of the trust
 * domain) is taken, and that agent decides policy, as for any tunnel. A refusal at the tunnel port
 * means nothing captures the address: it is dialled from the source pod's own address, as the pod
 * would have; without source preservation that dial would leave as the node, so it is refused. Any
 * other failure (a handshake, an identity of another trust domain) refuses the connection: never
 * plaintext to a pod that may be captured.
 */
async function connectUnknownPod(source: Workload, dst: Pick<SocketAddress, 'ip' | 'port'>, ctx: ProxyContext, conn: ConnectionHandle): Promise<RelayEnd> {
  ctx.certs.assertAvailable(source.spiffeId);
  conn.set({ route: 'tunnel', mutualTls: true });
  try {
    const stream = await ctx.pool.connect(source.spiffeId, {
      podIp: dst.ip, port: dst.port, expectedPeerId: undefined, sourceIp: source.ip, traceId: conn.info.traceId,
    });
    const { peerId, openedSession } = ctx.pool.streamInfo(stream);
    conn.set({ ...(peerId ? { destinationPrincipal: peerId } : {}), handshakes: openedSession ? 1 : 0 });
    return h2StreamEnd(stream);
  } catch (err) {
    if (!refusedAtConnect(err)) throw err;
  }
  conn.set({ route: 'passthrough', mutualTls: false });
  if (!ctx.preserveSource) throw new OutsideMeshError(`${dst.ip}:${dst.port}`);
  enforce(conn, ctx.policy.allowPassthrough(source, dst.ip, dst.port));
  return socketEnd(await connectFromSource(ctx, dst.ip, dst.port, { ip: source.ip }));
}
