// Live connections: what /config_dump lists, one access-log line for each when it ends, and the
// TCP metrics (opened when established, bytes as they flow, closed at the end).
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { errorCode, PolicyDeniedError } from '../errors.ts';
import type { MeshService, Workload } from '../workloads/model.ts';

/** What a connection's metrics need to know about it (filled in by the proxies as they learn it). */
export interface MeteredConnection {
  reporter: 'source' | 'destination';
  src?: Workload;
  /** Verified principal when the source workload is not known (a peer node's claim was not believed). */
  sourcePrincipal?: string;
  dst?: Workload;
  /** The Service the source addressed (its cluster IP), when it did: the source reporter knows it. */
  service?: MeshService;
  mutualTls: boolean;
  /** Same-node connections: this agent is also the destination's reporter, so it reports both. */
  alsoDestination?: boolean;
  bytesSent: number;
  bytesReceived: number;
  /**
   * Chunks relayed either way after a pause of a millisecond or more: each woke the agent for this
   * connection alone (a keep-alive request), where a bulk transfer's reads come back to back.
   */
  wakeups: number;
  /** 1 for the connection whose tunnel session's TLS handshake it caused (the first on a session). */
  handshakes?: number;
}

/**
 * The data plane's counters, as they flow back to the control plane (MeshMetrics in the agent).
 * Each call is one event with plain values, so that a data plane in a worker can batch them.
 */
/** A policy decision as counted (policy/engine.ts); audit_unmatched: an AUDIT policy selected and did not match. */
export type DecisionAction = 'allow' | 'deny' | 'audit' | 'audit_unmatched';

export interface DataPlaneTelemetry {
  opened(c: MeteredConnection, setupSeconds: number, route: string): void;
  closed(c: MeteredConnection): void;
  refused(reporter: string, error: string): void;
  decision(action: DecisionAction, policy: string): void;
  tunnelStalled(reason: string): void;
  endpointEjected(namespace: string, name: string): void;
  handshake(seconds: number, ok: boolean): void;
}

export type Direction = 'outbound' | 'inbound' | 'inbound_plaintext';
export type Route = 'tunnel' | 'local' | 'passthrough' | 'inbound' | 'released' | 'refused';

export interface ConnectionInfo extends MeteredConnection {
  id: number;
  direction: Direction;
  sourceIp: string;
  sourcePrincipal?: string;
  destination?: string;
  destinationPrincipal?: string;
  route?: Route;
  /** Service endpoints tried (a connection to a cluster IP), the last one carried it. */
  attempts?: number;
  /** The policy that allowed the connection (namespace/name), when one did. */
  policy?: string;
  /** AUDIT policies that matched. */
  audit?: string[];
  /** AUDIT policies that select the destination and did not match: what each would deny as an ALLOW. */
  auditUnmatched?: string[];
  /** W3C trace id, shared by the source and destination agents' log lines (tunnel `traceparent`). */
  traceId: string;
  startedAt: number;
  establishedAt?: number;
}

/** A connection as /config_dump shows it (workload objects reduced to names). */
export type ConnectionView = Omit<ConnectionInfo, 'src' | 'dst' | 'service'> & { sourceWorkload?: string; destinationWorkload?: string; destinationService?: string };

export interface ConnectionHandle {
  readonly info: ConnectionInfo;
  set(fields: Partial<Omit<ConnectionInfo, 'id' | 'startedAt'>>): void;
  /** Upstream connected (or tunnel accepted): from here on it counts as an open connection. */
  established(): void;
  /** Ends the record and writes its access-log line. Later calls are ignored. */
  close(outcome: { error?: unknown; reset?: boolean }): void;
  /**
   * The decision this agent made for the connection, to be made again on every change (policies,
   * labels, mTLS modes, membership): `check` throws the typed refusal when it would now be refused.
   */
  guard(check: () => void): void;
  /** How to end the connection at once (reset both ends), once it is relayed. */
  onTerminate(terminate: () => void): void;
}

const name = (w: { namespace: string; name: string } | undefined) => (w ? `${w.namespace}/${w.name}` : undefined);

/** A new W3C trace id: 32 hex digits, 122 of their bits random (randomUUID draws from a pooled buffer, far cheaper per call than randomBytes). */
export function newTraceId(): string {
  return randomUUID().replaceAll('-', '');
}

/** A connection whose decision is made again on every change, and how it is ended. */
interface Guarded {
  check: () => void;
  terminate?: () => void;
  /** Refused by a re-check before it was relayed: terminated as soon as it is. */
  revoked?: unknown;
}

export class ConnectionTracker {
  #nextId = 1;
  readonly #open = new Map<number, ConnectionInfo>();
  readonly #guarded = new Map<number, Guarded>();
  /** Why each revoked connection was ended, for its access-log line. */
  readonly #revoked = new Map<number, unknown>();
  #totals = { opened: 0, closed: 0, failed: 0 };
  readonly #access: Logger;
  readonly #metrics: DataPlaneTelemetry | undefined;

  constructor(access: Logger, metrics?: DataPlaneTelemetry) {
    this.#access = access;
    this.#metrics = metrics;
  }

  open(direction: Direction, sourceIp: string, traceId: string = newTraceId()): ConnectionHandle {
    const info: ConnectionInfo = {
      id: this.#nextId++, direction, sourceIp, traceId, startedAt: Date.now(), bytesSent: 0, bytesReceived: 0, wakeups: 0,
      reporter: direction === 'outbound' ? 'source' : 'destination', mutualTls: direction === 'inbound',
    };
    this.#open.set(info.id, info);
    this.#totals.opened++;
    let closed = false;
    const metrics = this.#metrics;
    return {
      info,
      set: (fields) => { Object.assign(info, fields); },
      established: () => {
        if (info.establishedAt !== undefined) return;
        info.establishedAt = Date.now();
        metrics?.opened(info, (info.establishedAt - info.startedAt) / 1000, info.route ?? 'unknown');
      },
      guard: (check) => { if (!closed) this.#guarded.set(info.id, { check }); },
      onTerminate: (terminate) => {
        const g = this.#guarded.get(info.id);
        if (!g) return;
        g.terminate = terminate;
        if (g.revoked !== undefined) terminate();
      },
      close: (outcome) => {
        if (closed) return;
        closed = true;
        // A connection ended by a re-check is recorded with the refusal that ended it.
        const revoked = this.#revoked.get(info.id);
        const error = revoked ?? outcome.error;
        const reset = outcome.reset;
        this.#revoked.delete(info.id);
        this.#guarded.delete(info.id);
        this.#open.delete(info.id);
        this.#totals.closed++;
        if (error) this.#totals.failed++;
        if (info.establishedAt !== undefined) metrics?.closed(info);
        else metrics?.refused(info.reporter, errorCode(error ?? new Error('closed before established')));
        // Access log off (or above this line's level): do not even build the line.
        if (!this.#access.isLevelEnabled(error ? 'warn' : 'info')) return;
        const line = {
          conn: info.id,
          trace_id: info.traceId,
          direction: info.direction,
          reporter: info.reporter,
          route: info.route,
          src: { ip: info.sourceIp, workload: name(info.src), namespace: info.src?.namespace, principal: info.sourcePrincipal ?? info.src?.spiffeId },
          dst: {
            addr: info.destination, workload: name(info.dst), namespace: info.dst?.namespace, principal: info.destinationPrincipal ?? info.dst?.spiffeId,
            ...(info.service ? { service: name(info.service) } : {}),
          },
          ...(info.attempts && info.attempts > 1 ? { attempts: info.attempts } : {}),
          connection_security_policy: info.mutualTls ? 'mutual_tls' : 'none',
          bytes_sent: info.bytesSent,
          bytes_received: info.bytesReceived,
          duration_ms: Date.now() - info.startedAt,
          outcome: error ? 'error' : reset ? 'reset' : 'ok',
          ...(info.policy ? { policy: info.policy } : {}),
          ...(info.audit ? { audit: info.audit } : {}),
          ...(info.auditUnmatched ? { audit_unmatched: info.auditUnmatched } : {}),
          ...(error ? { error: errorCode(error), reason: (error as Error).message } : {}),
          ...(error instanceof PolicyDeniedError ? { policy: error.policy } : {}),
        };
        if (error) this.#access.warn(line, 'connection refused or failed');
        else this.#access.info(line, 'connection closed');
      },
    };
  }

  /**
   * Makes the decision of every guarded open connection again (after a change of policies, labels,
   * mTLS modes, membership) and ends, with a reset, each one that would now be refused; its
   * access-log line carries the refusal (code, reason, deciding policy). Returns how many ended.
   */
  recheck(): number {
    let ended = 0;
    for (const [id, g] of this.#guarded) {
      if (g.revoked !== undefined) continue;
      try {
        g.check();
      } catch (err) {
        g.revoked = err;
        this.#revoked.set(id, err);
        ended++;
        g.terminate?.();
      }
    }
    return ended;
  }

  list(): ConnectionView[] {
    return [...this.#open.values()].map(({ src, dst, service, ...rest }) => ({ ...rest, sourceWorkload: name(src), destinationWorkload: name(dst), destinationService: name(service) }));
  }

  /** A refusal that never became a connection record (TLS handshake, protocol, limits). */
  refused(reporter: 'source' | 'destination', code: string): void {
    this.#totals.failed++;
    this.#metrics?.refused(reporter, code);
  }

  /** Open connections per direction (the metrics gauge). */
  openByDirection(): Record<string, number> {
    const n: Record<string, number> = { outbound: 0, inbound: 0, inbound_plaintext: 0 };
    for (const c of this.#open.values()) n[c.direction] = (n[c.direction] ?? 0) + 1;
    return n;
  }

  get totals(): { opened: number; closed: number; failed: number; open: number } {
    return { ...this.#totals, open: this.#open.size };
  }
}
