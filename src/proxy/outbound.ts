// Port 15001: everything a captured pod on this node sends. One connection, one straight line:
// who sent it, where it was going, which route, relay.
import type { Socket } from 'node:net';
import { originalDestination, plainIp, type SocketAddress } from '../capture/socket.ts';
import { UnknownSourceError } from '../errors.ts';
import type { ConnectionHandle } from '../telemetry/connections.ts';
import type { Workload } from '../workloads/model.ts';
import { assertNotSelf, connectTcp, type ProxyContext } from './context.ts';
import { h2StreamEnd, relayConnection, socketEnd, type RelayEnd } from './relay.ts';
import { enforce } from './decision.ts';

export async function handleOutbound(socket: Socket, ctx: ProxyContext): Promise<void> {
  const conn = ctx.connections.open('outbound', plainIp(socket.remoteAddress));
  const client = socketEnd(socket);
  try {
    const source = findLocalSource(socket, ctx);
    conn.set({ src: source });
    const dst = originalDestination(socket);
    assertNotSelf(dst, socket);
    conn.set({ destination: `${dst.ip}:${dst.port}` });
    await relayConnection(conn, client, await connectRoute(source, dst, ctx, conn), ctx.idleTimeoutMs);
  } catch (err) {
    client.reset();
    conn.close({ error: err });
  }
}

/** The sender must be a captured workload of this node; anything else is never forwarded. */
function findLocalSource(socket: Socket, ctx: ProxyContext): Workload {
  const ip = plainIp(socket.remoteAddress);
  const source = ctx.registry.findWorkload(ip);
  if (!source || !source.captured || !ctx.registry.isLocal(source)) throw new UnknownSourceError(ip);
  return source;
}

async function connectRoute(source: Workload, dst: SocketAddress, ctx: ProxyContext, conn: ConnectionHandle): Promise<RelayEnd> {
  const target = ctx.registry.findWorkload(dst.ip);
  if (!target || !target.captured) {
    // Outside the mesh: plain TCP, if policy allows leaving the mesh.
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
    enforce(conn, ctx.policy.authorize({
      sourcePrincipal: source.spiffeId, sourceIp: source.ip, sourceNamespace: source.namespace,
      destination: target, destinationPort: dst.port,
    }));
    return socketEnd(await connectTcp(dst.ip, dst.port, ctx.connectTimeoutMs));
  }

  // Another node: the destination agent enforces policy with the identity it verified.
  conn.set({ route: 'tunnel', mutualTls: true });
  const stream = await ctx.pool.connect(source.spiffeId, {
    podIp: target.ip, port: dst.port, expectedPeerId: target.spiffeId, sourceIp: source.ip, traceId: conn.info.traceId,
  });
  return h2StreamEnd(stream);
}
