// Which of a node's agents answers kubelet's readiness probes. During a rolling update two agents
// run on a node (maxSurge 1) and share the readiness port through SO_REUSEPORT, so the kernel
// spreads the probes of the new pod over both: the old agent, ready, would report the new pod ready
// before it is, and the DaemonSet would then stop the old agent while the new one cannot yet serve
// the node's pods. So the newest agent answers. Each agent holds or joins the node's succession
// socket (an abstract Unix socket: one per network namespace, gone with its process): the first
// holds it; a later one connects to it, and the holder stops answering readiness for as long as
// that connection lasts. When the holder exits, the newer agent takes the socket over.
import net from 'node:net';
import type { Logger } from 'pino';

/** Where this agent stands: holding the socket (alone, or succeeded by newer agents), or joined to its holder. */
export type SuccessionState =
  | { kind: 'starting' }
  | { kind: 'holding'; successors: number }
  | { kind: 'joined' }
  | { kind: 'closed' };

export interface SuccessionEvents {
  /** A newer agent started: stop answering readiness. */
  succeeded(): void;
  /** Every newer agent is gone again: answer readiness. */
  resumed(): void;
}

/** The abstract socket name for the agents that share a readiness port. */
export function successionSocket(readinessPort: number): string {
  return `\0meshlet-agent-succession-${readinessPort}`;
}

export class Succession {
  readonly #path: string;
  readonly #events: SuccessionEvents;
  readonly #log: Logger;
  #state: SuccessionState = { kind: 'starting' };
  #server: net.Server | undefined;
  #link: net.Socket | undefined;
  readonly #successors = new Set<net.Socket>();

  constructor(path: string, events: SuccessionEvents, log: Logger) {
    this.#path = path;
    this.#events = events;
    this.#log = log;
  }

  get state(): SuccessionState { return this.#state; }

  /** Holds the socket, or joins its holder; resolves once one of them is so. */
  async start(): Promise<void> {
    while (this.#state.kind !== 'closed') {
      if (await this.#hold()) return;
      if (await this.#join()) return;
      // The holder left between the two attempts: try holding again, after a breath.
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  #hold(): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const server = net.createServer((s) => this.#successor(s));
      server.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'EADDRINUSE') resolve(false);
        else reject(err);
      });
      server.listen({ path: this.#path }, () => {
        if (this.#state.kind === 'closed') { server.close(); resolve(true); return; }
        this.#server = server;
        this.#state = { kind: 'holding', successors: 0 };
        resolve(true);
      });
    });
  }

  #join(): Promise<boolean> {
    return new Promise((resolve) => {
      const link = net.connect({ path: this.#path });
      link.once('error', () => resolve(false));
      link.once('connect', () => {
        if (this.#state.kind === 'closed') { link.destroy(); resolve(true); return; }
        this.#link = link;
        this.#state = { kind: 'joined' };
        this.#log.info('another agent runs on this node: readiness is answered here from now on');
        link.on('data', () => { /* the holder sends nothing; read to see the end */ });
        link.once('close', () => {
          this.#link = undefined;
          if (this.#state.kind !== 'joined') return;
          this.#log.info('the older agent on this node is gone: holding the succession socket');
          this.#state = { kind: 'starting' };
          this.start().catch((err: Error) => this.#log.error({ err: err.message }, 'succession socket lost'));
        });
        resolve(true);
      });
    });
  }

  #successor(s: net.Socket): void {
    if (this.#state.kind !== 'holding') { s.destroy(); return; }
    s.on('error', () => { /* its close follows */ });
    s.on('data', () => { /* a successor sends nothing */ });
    this.#successors.add(s);
    this.#state = { kind: 'holding', successors: this.#successors.size };
    if (this.#successors.size === 1) {
      this.#log.info('a newer agent started on this node: it answers readiness now');
      this.#events.succeeded();
    }
    s.once('close', () => {
      this.#successors.delete(s);
      if (this.#state.kind !== 'holding') return;
      this.#state = { kind: 'holding', successors: this.#successors.size };
      if (this.#successors.size === 0) {
        this.#log.warn('the newer agent on this node is gone: readiness is answered here again');
        this.#events.resumed();
      }
    });
  }

  /** Lets go of the socket: a joined newer agent takes it over. */
  close(): void {
    this.#state = { kind: 'closed' };
    this.#server?.close();
    for (const s of this.#successors) s.destroy();
    this.#successors.clear();
    this.#link?.destroy();
  }
}
