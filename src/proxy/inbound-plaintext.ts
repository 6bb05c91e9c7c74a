// Port 15006: plaintext TCP to a captured pod from outside the mesh (a pod that is not captured, a
// node process). Permissive mode lets it through after policy; strict mode refuses it.
import type { Socket } from 'node:net';
import { plainIp } from '../capture/socket.ts';
import { UnknownDestinationError } from '../errors.ts';
import { plaintextRefusal } from '../policy/engine.ts';
import type { ProxyContext } from './context.ts';
import { assertNotSelf, connectLocalPod } from './deliver.ts';
import { relayConnection, socketEnd } from './relay.ts';
import { current, enforceAndGuard } from './decision.ts';

export async function handleInboundPlaintext(socket: Socket, ctx: ProxyContext): Promise<void> {
  const sourceIp = plainIp(socket.remoteAddress);
  const conn = ctx.connections.open('inbound_plaintext', sourceIp);
  const client = socketEnd(socket);
  let unregister: (() => void) | undefined;
  try {
    const dst = ctx.originalDestination(socket);
    assertNotSelf(dst, socket);
    // Not holdRedirect: clients outside the mesh (NodePort traffic SNATed with random ports, too)
    // pick their ports as they will; the open set still keeps deliveries off theirs.
    unregister = ctx.redirects.add(sourceIp, socket.remotePort ?? 0, dst.ip, dst.port);
    conn.set({ destination: `${dst.ip}:${dst.port}`, route: 'inbound' });
    const found = ctx.registry.findWorkload(dst.ip);
    // Capture stops redirecting a released pod's traffic a moment after the registry lets it go
    // (its grace over): such a connection reaches the pod as it would without the mesh, which it
    // has left. Only this node's pods, and only for DEPARTED_MS (workloads/registry.ts).
    const released = found?.captured ? undefined : ctx.registry.departed(dst.ip);
    const target = released ?? found;
    if (!target?.captured || !ctx.registry.isLocal(target)) throw new UnknownDestinationError(`${dst.ip}:${dst.port}`);
    conn.set({ dst: target, ...(released ? { route: 'released' as const } : {}) });
    if (!released) {
      enforceAndGuard(conn, () => {
        const t = current(ctx.registry, target);
        return plaintextRefusal(ctx.policy, t) ?? ctx.policy.authorize({ sourceIp, destination: t, destinationPort: dst.port });
      });
    }
    await relayConnection(conn, client, socketEnd(await connectLocalPod(ctx, target.ip, dst.port, { ip: sourceIp })), ctx.idleTimeoutMs);
  } catch (err) {
    client.reset();
    conn.close({ error: err });
  } finally {
    unregister?.();
  }
}
