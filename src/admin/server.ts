// Admin (config dump, bound to loopback by default) and readiness (reachable by kubelet).
import type http from 'node:http';
import { createRequire } from 'node:module';

// node:http through require, not an ESM import: the ESM form evaluates every export of the module,
// lazy ones included, and one of them loads Node's bundled undici (fetch, WebSocket): heap and RSS
// in every agent for nothing it uses, and a larger heap makes every major collection dearer
// (bench/README.md, "Agent memory").
const { createServer } = createRequire(import.meta.url)('node:http') as typeof import('node:http');

export interface ReadinessTask {
  name: string;
  done(): boolean;
}

export class Readiness {
  readonly #tasks: ReadinessTask[] = [];
  #draining = false;

  add(task: ReadinessTask): void {
    this.#tasks.push(task);
  }

  pending(): string[] {
    const names = this.#tasks.filter((t) => !t.done()).map((t) => t.name);
    return this.#draining ? ['draining', ...names] : names;
  }

  get ready(): boolean {
    return this.pending().length === 0;
  }

  /** A draining agent reports not ready so new traffic is steered elsewhere. */
  drain(): void {
    this.#draining = true;
  }
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export function createReadinessServer(readiness: Readiness): http.Server {
  return createServer((req, res) => {
    if (req.url === '/healthz/ready') {
      const pending = readiness.pending();
      if (pending.length === 0) json(res, 200, { ready: true });
      else json(res, 503, { ready: false, pending });
      return;
    }
    json(res, 404, { error: 'not found' });
  });
}

/** A change an operator asks for (POST); a thrown Error with `status` 400 is their mistake. */
export type AdminAction = (query: URLSearchParams) => unknown;

export class AdminRequestError extends Error {}

/**
 * Admin API on loopback: GET routes read state, POST actions change it (the log level). Being on
 * loopback is its access control, as for Envoy's and ztunnel's admin ports.
 */
export function createAdminServer(routes: Record<string, () => unknown>, actions: Record<string, AdminAction> = {}): http.Server {
  return createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://admin');
    const route = req.method === 'GET' ? routes[url.pathname] : undefined;
    const action = req.method === 'POST' ? actions[url.pathname] : undefined;
    if (!route && !action) {
      json(res, 404, { error: 'not found', get: Object.keys(routes), post: Object.keys(actions) });
      return;
    }
    const failed = (err: unknown) => json(res, err instanceof AdminRequestError ? 400 : 500, { error: (err as Error).message });
    try {
      // A route may answer later (the data-plane workers are asked across threads).
      Promise.resolve(route ? route() : action!(url.searchParams)).then((body) => json(res, 200, body), failed);
    } catch (err) {
      failed(err);
    }
  });
}

/** GET /metrics in Prometheus' text format. */
export function createMetricsServer(text: () => Promise<{ contentType: string; body: string }>): http.Server {
  return createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      json(res, 404, { error: 'not found', routes: ['/metrics'] });
      return;
    }
    text().then(
      ({ contentType, body }) => { res.writeHead(200, { 'content-type': contentType }); res.end(body); },
      (err: Error) => json(res, 500, { error: err.message }),
    );
  });
}
