// Admin (config dump, bound to loopback by default) and readiness (reachable by kubelet).
import http from 'node:http';

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
  return http.createServer((req, res) => {
    if (req.url === '/healthz/ready') {
      const pending = readiness.pending();
      if (pending.length === 0) json(res, 200, { ready: true });
      else json(res, 503, { ready: false, pending });
      return;
    }
    json(res, 404, { error: 'not found' });
  });
}

export function createAdminServer(routes: Record<string, () => unknown>): http.Server {
  return http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const route = routes[path];
    if (req.method !== 'GET' || !route) {
      json(res, 404, { error: 'not found', routes: Object.keys(routes) });
      return;
    }
    try {
      json(res, 200, route());
    } catch (err) {
      json(res, 500, { error: (err as Error).message });
    }
  });
}
