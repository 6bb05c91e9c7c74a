// Live connections: what /config_dump lists, and one access-log line for each when it ends.
import type { Logger } from 'pino';
import { errorCode, PolicyDeniedError } from '../errors.ts';

export type Direction = 'outbound' | 'inbound' | 'inbound_plaintext';
export type Route = 'tunnel' | 'local' | 'passthrough' | 'inbound' | 'refused';

export interface ConnectionInfo {
  id: number;
  direction: Direction;
  sourceIp: string;
  sourceWorkload?: string;
  sourcePrincipal?: string;
  destination?: string;
  destinationWorkload?: string;
  destinationPrincipal?: string;
  route?: Route;
  /** The policy that allowed the connection (namespace/name), when one did. */
  policy?: string;
  /** AUDIT policies that matched. */
  audit?: string[];
  startedAt: number;
  /** Bytes from the source towards the destination. */
  bytesSent: number;
  /** Bytes from the destination back to the source. */
  bytesReceived: number;
}

export interface ConnectionHandle {
  readonly info: ConnectionInfo;
  set(fields: Partial<Omit<ConnectionInfo, 'id' | 'startedAt'>>): void;
  /** Ends the record and writes its access-log line. Later calls are ignored. */
  close(outcome: { error?: unknown; reset?: boolean }): void;
}

export class ConnectionTracker {
  #nextId = 1;
  readonly #open = new Map<number, ConnectionInfo>();
  #totals = { opened: 0, closed: 0, failed: 0 };

  readonly #access: Logger;

  constructor(access: Logger) {
    this.#access = access;
  }

  open(direction: Direction, sourceIp: string): ConnectionHandle {
    const info: ConnectionInfo = { id: this.#nextId++, direction, sourceIp, startedAt: Date.now(), bytesSent: 0, bytesReceived: 0 };
    this.#open.set(info.id, info);
    this.#totals.opened++;
    let closed = false;
    return {
      info,
      set: (fields) => { Object.assign(info, fields); },
      close: ({ error, reset }) => {
        if (closed) return;
        closed = true;
        this.#open.delete(info.id);
        this.#totals.closed++;
        if (error) this.#totals.failed++;
        const line = {
          conn: info.id,
          direction: info.direction,
          route: info.route,
          src: { ip: info.sourceIp, workload: info.sourceWorkload, principal: info.sourcePrincipal },
          dst: { addr: info.destination, workload: info.destinationWorkload, principal: info.destinationPrincipal },
          bytes_sent: info.bytesSent,
          bytes_received: info.bytesReceived,
          duration_ms: Date.now() - info.startedAt,
          outcome: error ? 'error' : reset ? 'reset' : 'ok',
          ...(info.policy ? { policy: info.policy } : {}),
          ...(info.audit ? { audit: info.audit } : {}),
          ...(error ? { error: errorCode(error), reason: (error as Error).message } : {}),
          ...(error instanceof PolicyDeniedError ? { policy: error.policy } : {}),
        };
        if (error) this.#access.warn(line, 'connection refused or failed');
        else this.#access.info(line, 'connection closed');
      },
    };
  }

  list(): ConnectionInfo[] {
    return [...this.#open.values()];
  }

  get totals(): { opened: number; closed: number; failed: number; open: number } {
    return { ...this.#totals, open: this.#open.size };
  }
}
