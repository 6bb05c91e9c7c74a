// A CONNECT on a tunnel session (tunnel/server.ts accepts the sessions): the target must be the pod
// the connection was addressed to, the source is the identity the peer proved (and the pod it
// names, when the registry agrees), policy is decided now and on every change, then the pod is
// connected and the bytes relayed.
import http2 from 'node:http2';
import { plainIp } from '../capture/socket.ts';
import { BadTunnelTargetError, TunnelCancelledError, errorCode } from '../errors.ts';
import { parseWorkloadId } from '../identity/spiffe.ts';
import type { Workload } from '../workloads/model.ts';
import type { WorkloadRegistry } from '../workloads/registry.ts';
import type { ProxyContext } from './context.ts';
import { connectLocalPod } from './deliver.ts';
import { h2StreamEnd, type RelayEnd, relayConnection, socketEnd } from './relay.ts';
import { parseAuthority, parseForwardedFor, parseTraceparent } from './tunnel/h2.ts';
import { current, enforceAndGuard } from './decision.ts';

/**
 * The source workload a tunnel stream speaks for. The peer agent names the source pod's IP in
 * `forwarded: for=`; the claim is believed only when the registry places that IP on the very
 * identity the peer proved, so a peer cannot borrow another workload's address (IP-block policy).
 */
export function claimedSource(forwarded: string | string[] | undefined, peerId: string, registry: WorkloadRegistry): Workload | undefined {
  const w = registry.findWorkload(parseForwardedFor(forwarded));
  return w?.spiffeId === peerId ? w : undefined;
}

export async function handleConnect(
  stream: http2.ServerHttp2Stream,
  headers: http2.IncomingHttpHeaders,
  tunnel: { peerId: string; target: Workload; handshake?: boolean },
  ctx: ProxyContext,
): Promise<void> {
  const source = claimedSource(headers.forwarded, tunnel.peerId, ctx.registry);
  // Without a believable claim: the address the tunnel came from (the source node).
  const sourceIp = source?.ip ?? plainIp(stream.session?.socket?.remoteAddress);
  const conn = ctx.connections.open('inbound', sourceIp, parseTraceparent(headers.traceparent));
  conn.set({ route: 'inbound', sourcePrincipal: tunnel.peerId, ...(source ? { src: source } : {}), dst: tunnel.target, handshakes: tunnel.handshake ? 1 : 0 });
  const peer = h2StreamEnd(stream);
  let status = 500;
  let upstream: RelayEnd | undefined;
  try {
    const authorityText = String(headers[':authority'] ?? '');
    conn.set({ destination: authorityText });
    if (headers[':method'] !== 'CONNECT') {
      status = 405;
      throw new BadTunnelTargetError(authorityText, `method ${String(headers[':method'])} is not CONNECT`);
    }
    const authority = parseAuthority(authorityText);
    // The tunnel is no open relay: it only reaches the pod the connection was addressed to.
    status = 403;
    if (!authority || authority.host !== tunnel.target.ip) {
      throw new BadTunnelTargetError(authorityText, `only ${tunnel.target.ip} is reachable through this tunnel`);
    }
    if (ctx.agentPorts.has(authority.port)) {
      throw new BadTunnelTargetError(authorityText, `port ${authority.port} is one of the agent's own ports`);
    }
    // Every CONNECT is decided on the registry as it is now (a pooled session outlives relabels),
    // and again on every change while it is open.
    conn.set({ dst: current(ctx.registry, tunnel.target) });
    const sourceNamespace = parseWorkloadId(tunnel.peerId).namespace;
    enforceAndGuard(conn, () => ctx.policy.authorize({
      sourcePrincipal: tunnel.peerId, sourceIp, sourceNamespace, destination: current(ctx.registry, tunnel.target), destinationPort: authority.port,
    }));
    status = 503;
    const release = ctx.admitStream(tunnel.peerId);
    stream.once('close', release);
    status = 502;
    // Only a believed claim is kept as the source address: the app never sees an address a peer made up.
    upstream = socketEnd(await connectLocalPod(ctx, tunnel.target.ip, authority.port, source ? { ip: source.ip } : undefined));
    // A peer that cancelled the CONNECT while the pod answered: respond() would throw.
    if (stream.destroyed) throw new TunnelCancelledError();
    stream.respond({ ':status': 200 });
    await relayConnection(conn, peer, upstream, ctx.idleTimeoutMs);
  } catch (err) {
    // The pod's connection ends with the stream it was made for, whatever failed after it was made.
    upstream?.reset();
    if (!stream.destroyed && !stream.headersSent) {
      stream.respond({ ':status': status, 'x-meshlet-error': errorCode(err) }, { endStream: true });
    } else {
      peer.reset();
    }
    conn.close({ error: err });
  }
}
