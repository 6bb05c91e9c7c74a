// The data plane's three listeners, built the same way for the agent and for in-process tests:
// 15001 (the node's pods' outbound connections), 15006 (plaintext from outside the mesh) and 15008
// (tunnels). Sockets that face other hosts pass the connection limits as they are accepted.
import net from 'node:net';
import type { ProxyContext } from './context.ts';
import { handleInboundPlaintext } from './inbound-plaintext.ts';
import { handleOutbound } from './outbound.ts';
import { adoptForPooledReads } from './read-buffers.ts';
import { TunnelServer } from './tunnel/server.ts';

export interface DataListeners {
  outbound: net.Server;
  inboundPlaintext: net.Server;
  tunnel: TunnelServer;
}

export interface ListenerHooks {
  /**
   * Connection limits for a socket accepted on 15001 (`source`: this agent reports as the source)
   * or 15006 (`destination`): false when it was refused (and reset).
   */
  admit(socket: net.Socket, reporter: 'source' | 'destination'): boolean;
  /** Told of every socket the listeners accept, to be drained or destroyed on shutdown. */
  track(socket: net.Socket): void;
}

export function createDataListeners(ctx: ProxyContext, hooks: ListenerHooks): DataListeners {
  // The pods' own connections (15001) read into reused buffers (read-buffers.ts): accepted paused,
  // then moved into a socket that does. Half-open on both: an end is forwarded, not answered.
  const serve = (reporter: 'source' | 'destination', handle: (s: net.Socket, ctx: ProxyContext) => Promise<void>, pooled: boolean) =>
    net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: pooled }, (accepted) => {
      const s = pooled ? adoptForPooledReads(accepted) : accepted;
      if (hooks.admit(s, reporter)) { hooks.track(s); void handle(s, ctx); }
    });
  const tunnel = new TunnelServer(ctx);
  tunnel.listener.on('connection', hooks.track);
  return { outbound: serve('source', handleOutbound, true), inboundPlaintext: serve('destination', handleInboundPlaintext, false), tunnel };
}

/** Resolves once `server` listens (an error while binding rejects, and is not left as a listener). */
export function listen(server: net.Server, opts: net.ListenOptions & { reusePort?: boolean }): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts, () => { server.off('error', reject); resolve(); });
  });
}
