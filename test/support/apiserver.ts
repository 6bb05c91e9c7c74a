// A Kubernetes API stand-in for tests: real paths, real object and Status shapes, resourceVersions
// and optimistic concurrency, field selectors, and TokenReview. It serves what meshlet's CA reads
// (pods, secrets, configmaps, tokenreviews); list/watch streams for the workload source build on
// the same store.
import http from 'node:http';
import { KubeConfig } from '@kubernetes/client-node';

export interface TokenInfo {
  username: string;
  uid?: string;
  audiences: string[];
  extra?: Record<string, string[]>;
  expired?: boolean;
}

type Obj = { metadata: { name: string; namespace?: string; resourceVersion?: string; uid?: string; [k: string]: unknown }; [k: string]: unknown };

const KINDS: Record<string, { kind: string; list: string }> = {
  pods: { kind: 'Pod', list: 'PodList' },
  secrets: { kind: 'Secret', list: 'SecretList' },
  configmaps: { kind: 'ConfigMap', list: 'ConfigMapList' },
  namespaces: { kind: 'Namespace', list: 'NamespaceList' },
};

export class ApiStandIn {
  readonly server: http.Server;
  readonly tokens = new Map<string, TokenInfo>();
  readonly requests: Array<{ method: string; path: string }> = [];
  /** The bearer token clients (the CA) must present. */
  readonly clientToken = 'stand-in-client-token';
  /** When true every request fails at the TCP level, like an apiserver that is down. */
  down = false;
  #rv = 100;
  readonly #store = new Map<string, Map<string, Obj>>();

  private constructor() {
    this.server = http.createServer((req, res) => this.#handle(req, res));
  }

  static async start(): Promise<ApiStandIn> {
    const api = new ApiStandIn();
    await new Promise<void>((resolve) => api.server.listen(0, '127.0.0.1', resolve));
    return api;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }

  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'stand-in', server: this.url, skipTLSVerify: true }],
      users: [{ name: 'ca', token: this.clientToken }],
      contexts: [{ name: 'stand-in', cluster: 'stand-in', user: 'ca' }],
      currentContext: 'stand-in',
    });
    return kc;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  #bucket(resource: string): Map<string, Obj> {
    let b = this.#store.get(resource);
    if (!b) this.#store.set(resource, b = new Map());
    return b;
  }

  /** Adds or replaces an object (as a controller would); returns it with a new resourceVersion. */
  put(resource: string, obj: Obj): Obj {
    const stored = structuredClone(obj);
    stored.metadata.resourceVersion = String(++this.#rv);
    stored.metadata.uid ??= `uid-${resource}-${stored.metadata.namespace ?? ''}-${stored.metadata.name}`;
    this.#bucket(resource).set(key(stored.metadata.namespace, stored.metadata.name), stored);
    return stored;
  }

  remove(resource: string, namespace: string | undefined, name: string): void {
    this.#bucket(resource).delete(key(namespace, name));
  }

  get(resource: string, namespace: string | undefined, name: string): Obj | undefined {
    return this.#bucket(resource).get(key(namespace, name));
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    if (this.down) { req.socket.destroy(); return; }
    const url = new URL(req.url ?? '/', 'http://x');
    this.requests.push({ method: req.method ?? '', path: url.pathname + url.search });
    if (req.headers.authorization !== `Bearer ${this.clientToken}`) return status(res, 401, 'Unauthorized', 'Unauthorized');
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      try {
        this.#route(req.method ?? 'GET', url, body ? JSON.parse(body) : undefined, res);
      } catch (err) {
        status(res, 400, 'BadRequest', (err as Error).message);
      }
    });
  }

  #route(method: string, url: URL, body: any, res: http.ServerResponse): void {
    const p = url.pathname;
    if (p === '/apis/authentication.k8s.io/v1/tokenreviews' && method === 'POST') return this.#tokenReview(body, res);
    let m = /^\/api\/v1\/(pods|secrets|configmaps|namespaces)$/.exec(p);
    if (m && method === 'GET') return this.#list(m[1]!, undefined, url, res);
    m = /^\/api\/v1\/namespaces\/([^/]+)\/(pods|secrets|configmaps)(?:\/([^/]+))?$/.exec(p);
    if (!m) return status(res, 404, 'NotFound', `the server could not find the requested resource (${p})`);
    const [, ns, resource, name] = m as unknown as [string, string, string, string | undefined];
    const kind = KINDS[resource]!;
    if (!name && method === 'GET') return this.#list(resource, ns, url, res);
    if (!name && method === 'POST') {
      if (this.get(resource, ns, body.metadata.name)) return status(res, 409, 'AlreadyExists', `${resource} "${body.metadata.name}" already exists`);
      return json(res, 201, { apiVersion: 'v1', kind: kind.kind, ...this.put(resource, { ...body, metadata: { ...body.metadata, namespace: ns } }) });
    }
    const existing = name ? this.get(resource, ns, name) : undefined;
    if (method === 'GET') {
      if (!existing) return status(res, 404, 'NotFound', `${resource} "${name}" not found`);
      return json(res, 200, { apiVersion: 'v1', kind: kind.kind, ...existing });
    }
    if (method === 'PUT') {
      if (!existing) return status(res, 404, 'NotFound', `${resource} "${name}" not found`);
      const rv = body.metadata?.resourceVersion;
      if (rv && rv !== existing.metadata.resourceVersion) {
        return status(res, 409, 'Conflict', `Operation cannot be fulfilled on ${resource} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
      }
      return json(res, 200, { apiVersion: 'v1', kind: kind.kind, ...this.put(resource, { ...body, metadata: { ...body.metadata, namespace: ns, name } }) });
    }
    return status(res, 405, 'MethodNotAllowed', `${method} is not supported`);
  }

  #list(resource: string, ns: string | undefined, url: URL, res: http.ServerResponse): void {
    const selectors = parseFieldSelector(url.searchParams.get('fieldSelector') ?? '');
    const items = [...this.#bucket(resource).values()]
      .filter((o) => ns === undefined || o.metadata.namespace === ns)
      .filter((o) => selectors.every(({ path, op, value }) => (field(o, path) === value) === (op === '=')));
    json(res, 200, { apiVersion: 'v1', kind: KINDS[resource]!.list, metadata: { resourceVersion: String(this.#rv) }, items });
  }

  #tokenReview(body: any, res: http.ServerResponse): void {
    const token = body?.spec?.token;
    const wanted: string[] = body?.spec?.audiences ?? [];
    const info = typeof token === 'string' ? this.tokens.get(token) : undefined;
    const review = (status: object) => json(res, 201, { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', metadata: { creationTimestamp: null }, spec: body.spec, status });
    if (!info) return review({ authenticated: false, error: '[invalid bearer token, square/go-jose: error in cryptographic primitive]', user: {} });
    if (info.expired) return review({ authenticated: false, error: '[invalid bearer token, service account token has expired]', user: {} });
    const audiences = wanted.length === 0 ? info.audiences : wanted.filter((a) => info.audiences.includes(a));
    if (wanted.length > 0 && audiences.length === 0) {
      return review({ authenticated: false, error: '[invalid bearer token, token audiences ["' + info.audiences.join('","') + '"] is invalid for the target audiences ["' + wanted.join('","') + '"]]', user: {} });
    }
    const [, , saNs] = info.username.split(':');
    review({
      authenticated: true,
      audiences,
      user: {
        username: info.username, uid: info.uid ?? 'uid-sa',
        groups: ['system:serviceaccounts', `system:serviceaccounts:${saNs}`, 'system:authenticated'],
        ...(info.extra ? { extra: info.extra } : {}),
      },
    });
  }
}

function key(namespace: string | undefined, name: string): string {
  return `${namespace ?? ''}/${name}`;
}

function field(o: Obj, path: string): unknown {
  return path.split('.').reduce<any>((v, k) => v?.[k], o);
}

function parseFieldSelector(text: string): Array<{ path: string; op: '=' | '!='; value: string }> {
  if (!text) return [];
  return text.split(',').map((term) => {
    const m = /^([a-zA-Z.]+)(!=|==|=)(.*)$/.exec(term);
    if (!m) throw new Error(`invalid field selector term ${JSON.stringify(term)}`);
    return { path: m[1]!, op: m[2] === '!=' ? '!=' : '=', value: m[3]! };
  });
}

function json(res: http.ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function status(res: http.ServerResponse, code: number, reason: string, message: string): void {
  json(res, code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
}

/** A running pod as the apiserver returns it (the fields meshlet reads, plus typical ones). */
export function podObject(opts: { name: string; namespace: string; node: string; serviceAccount?: string; ip?: string; phase?: string; hostNetwork?: boolean }): Obj {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: opts.name, namespace: opts.namespace, labels: { app: opts.name }, creationTimestamp: '2026-11-24T10:00:00Z' },
    spec: {
      nodeName: opts.node, serviceAccountName: opts.serviceAccount ?? 'default', hostNetwork: opts.hostNetwork ?? false,
      containers: [{ name: 'app', image: 'example/app:1' }],
    },
    status: { phase: opts.phase ?? 'Running', podIP: opts.ip, podIPs: opts.ip ? [{ ip: opts.ip }] : [] },
  };
}
