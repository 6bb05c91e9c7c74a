// Which endpoint of a Service a new connection goes to, and which endpoints are left out for a while.
//
// Power of two choices on open connections: two distinct candidates drawn at random, the one with
// fewer connections open through this agent wins. It needs no shared state between agents and
// avoids the herd that "least connections" sends to a newly started endpoint.
//
// Outlier detection: an endpoint that fails `consecutiveFailures` connection attempts in a row (refused,
// timed out, tunnel rejected, all before any byte flowed) is ejected for `baseEjectionMs` times the
// number of times it has been ejected (capped), then tried again. Never the last healthy endpoint:
// when every candidate is ejected they are all tried anyway (Envoy's "panic" mode), because a
// maybe-broken endpoint beats certainly none.
import type { MeshService, ServiceEndpoint } from '../workloads/model.ts';

export interface BalancerOptions {
  consecutiveFailures?: number;
  baseEjectionMs?: number;
  maxEjectionMs?: number;
  now?: () => number;
  random?: () => number;
  /** Told when an endpoint is ejected (logs and metrics). */
  onEject?(service: MeshService, endpoint: ServiceEndpoint, forMs: number, lastError: string): void;
}

interface EndpointState {
  open: number;
  consecutiveFailures: number;
  ejections: number;
  ejectedUntil: number;
  lastError?: string;
}

/** One connection attempt's hold on an endpoint: report its result, release it when it ends. */
export interface EndpointLease {
  endpoint: ServiceEndpoint;
  success(): void;
  failure(err: unknown): void;
  /** The connection ended (or never started): one fewer open. Idempotent. */
  release(): void;
}

export interface EndpointView {
  ip: string;
  node?: string;
  ready: boolean;
  ports: Readonly<Record<string, number>>;
  open: number;
  consecutiveFailures: number;
  ejections: number;
  ejectedUntil?: string;
  lastError?: string;
}

const serviceKey = (s: MeshService) => `${s.namespace}/${s.name}`;

export class EndpointBalancer {
  readonly #opts: Required<Omit<BalancerOptions, 'onEject'>> & Pick<BalancerOptions, 'onEject'>;
  /** Per service, per endpoint IP. */
  readonly #state = new Map<string, Map<string, EndpointState>>();
  readonly #keys = new WeakMap<MeshService, string>();
  /** Per Service, when its latest ejection ends: before then some endpoint may be out. */
  readonly #lastEjectionEnds = new Map<string, number>();
  /** Candidate lists per Service object and port (a snapshot's Services never change). */
  readonly #lists = new WeakMap<MeshService, Map<string, { all: ServiceEndpoint[]; close: Map<string, ServiceEndpoint[]> }>>();

  constructor(opts: BalancerOptions = {}) {
    this.#opts = {
      consecutiveFailures: opts.consecutiveFailures ?? 3,
      baseEjectionMs: opts.baseEjectionMs ?? 10_000,
      maxEjectionMs: opts.maxEjectionMs ?? 300_000,
      now: opts.now ?? Date.now,
      random: opts.random ?? Math.random,
      ...(opts.onEject ? { onEject: opts.onEject } : {}),
    };
  }

  #byService(service: MeshService): Map<string, EndpointState> {
    let key = this.#keys.get(service);
    if (key === undefined) this.#keys.set(service, key = serviceKey(service));
    let byIp = this.#state.get(key);
    if (!byIp) this.#state.set(key, byIp = new Map());
    return byIp;
  }

  #stateOf(service: MeshService, ip: string): EndpointState {
    const byIp = this.#byService(service);
    let s = byIp.get(ip);
    if (!s) byIp.set(ip, s = { open: 0, consecutiveFailures: 0, ejections: 0, ejectedUntil: 0 });
    return s;
  }

  /** Ready endpoints serving `portName` (and of those, the ones on `node`): fixed per snapshot, so worked out once. */
  #candidates(service: MeshService, portName: string, node: string): { all: ServiceEndpoint[]; close: ServiceEndpoint[] } {
    let byPort = this.#lists.get(service);
    if (!byPort) this.#lists.set(service, byPort = new Map());
    let lists = byPort.get(portName);
    if (!lists) byPort.set(portName, lists = { all: service.endpoints.filter((e) => e.ready && e.ports[portName] !== undefined), close: new Map() });
    let close = lists.close.get(node);
    if (!close) lists.close.set(node, close = lists.all.filter((e) => e.node === node));
    return { all: lists.all, close };
  }

  /**
   * The endpoint for a new connection to `portName`, skipping `exclude` (endpoints this connection
   * already tried). Ready endpoints that serve the port; healthy ones if any; this node's if the
   * Service prefers close ones and this node has a healthy one.
   */
  pick(service: MeshService, portName: string, localNode: string, exclude: ReadonlySet<string> = new Set()): ServiceEndpoint | undefined {
    const now = this.#opts.now();
    const lists = this.#candidates(service, portName, localNode);
    const byIp = this.#byService(service);
    const ejected = (e: ServiceEndpoint) => (byIp.get(e.ip)?.ejectedUntil ?? 0) > now;
    const anyEjected = (this.#lastEjectionEnds.get(this.#keys.get(service) as string) ?? 0) > now;
    const usable = (list: ServiceEndpoint[]) => {
      // The common case (nothing excluded, nothing ejected) takes the cached list as it is.
      if (exclude.size === 0 && !anyEjected) return list;
      const candidates = list.filter((e) => !exclude.has(e.ip));
      const healthy = candidates.filter((e) => !ejected(e));
      return healthy.length > 0 ? healthy : candidates;
    };
    let pool = usable(lists.all);
    if (service.preferClose && lists.close.length > 0) {
      const close = usable(lists.close);
      // Close endpoints, unless the only ones left there are ejected while far ones are healthy.
      if (close.length > 0 && (close.some((e) => !ejected(e)) || pool.every(ejected))) pool = close;
    }
    if (pool.length === 0) return undefined;
    if (pool.length === 1) return pool[0];
    const i = Math.floor(this.#opts.random() * pool.length);
    let j = Math.floor(this.#opts.random() * (pool.length - 1));
    if (j >= i) j++;
    const a = pool[i] as ServiceEndpoint;
    const b = pool[j] as ServiceEndpoint;
    return (byIp.get(b.ip)?.open ?? 0) < (byIp.get(a.ip)?.open ?? 0) ? b : a;
  }

  lease(service: MeshService, endpoint: ServiceEndpoint): EndpointLease {
    const s = this.#stateOf(service, endpoint.ip);
    s.open++;
    let released = false;
    return {
      endpoint,
      success: () => { s.consecutiveFailures = 0; },
      failure: (err) => this.#failed(service, endpoint, s, err),
      release: () => {
        if (released) return;
        released = true;
        s.open--;
      },
    };
  }

  #failed(service: MeshService, endpoint: ServiceEndpoint, s: EndpointState, err: unknown): void {
    const now = this.#opts.now();
    s.consecutiveFailures++;
    s.lastError = err instanceof Error ? err.message : String(err);
    if (s.consecutiveFailures < this.#opts.consecutiveFailures || s.ejectedUntil > now) return;
    // Never the last healthy endpoint of the Service.
    const healthyOthers = service.endpoints.filter((e) => e.ready && e.ip !== endpoint.ip && this.#stateOf(service, e.ip).ejectedUntil <= now);
    if (healthyOthers.length === 0) return;
    s.ejections++;
    const forMs = Math.min(this.#opts.baseEjectionMs * s.ejections, this.#opts.maxEjectionMs);
    s.ejectedUntil = now + forMs;
    const key = serviceKey(service);
    this.#lastEjectionEnds.set(key, Math.max(this.#lastEjectionEnds.get(key) ?? 0, s.ejectedUntil));
    s.consecutiveFailures = 0;
    this.#opts.onEject?.(service, endpoint, forMs, s.lastError);
  }

  /** Forgets endpoints and Services that are gone (a new snapshot). */
  prune(services: readonly MeshService[]): void {
    const live = new Map(services.map((s) => [serviceKey(s), new Set(s.endpoints.map((e) => e.ip))]));
    for (const [key, byIp] of this.#state) {
      const ips = live.get(key);
      if (!ips) { this.#state.delete(key); this.#lastEjectionEnds.delete(key); continue; }
      // An endpoint with connections still open keeps its count until they end.
      for (const [ip, s] of byIp) if (!ips.has(ip) && s.open === 0) byIp.delete(ip);
    }
  }

  /** Endpoints currently ejected, per Service (a gauge: workers' lists are merged, so addresses). */
  ejected(): Array<{ namespace: string; name: string; ips: string[] }> {
    const now = this.#opts.now();
    return [...this.#state].map(([key, byIp]) => {
      const [namespace = '', name = ''] = key.split('/');
      return { namespace, name, ips: [...byIp].filter(([, s]) => s.ejectedUntil > now).map(([ip]) => ip) };
    });
  }

  view(service: MeshService): EndpointView[] {
    const now = this.#opts.now();
    return service.endpoints.map((e) => {
      const s = this.#state.get(serviceKey(service))?.get(e.ip);
      return {
        ip: e.ip, ...(e.node ? { node: e.node } : {}), ready: e.ready, ports: e.ports,
        open: s?.open ?? 0, consecutiveFailures: s?.consecutiveFailures ?? 0, ejections: s?.ejections ?? 0,
        ...(s && s.ejectedUntil > now ? { ejectedUntil: new Date(s.ejectedUntil).toISOString() } : {}),
        ...(s?.lastError ? { lastError: s.lastError } : {}),
      };
    });
  }
}
