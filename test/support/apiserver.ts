// A Kubernetes API stand-in for tests: real paths, real object and Status shapes, resourceVersions
// and optimistic concurrency, field selectors, paged lists (limit/continue), TokenReview, and watch
// streams the way the apiserver serves them: one chunked HTTP response of JSON lines, replay from a
// resourceVersion, ADDED/MODIFIED/DELETED (with field-selector transitions turned into ADDED and
// DELETED), BOOKMARK when asked for, and 410 Gone for a resourceVersion older than the history kept.
import http from 'node:http';
import { KubeConfig } from '@kubernetes/client-node';

export interface TokenInfo {
  username: string;
  uid?: string;
  audiences: string[];
  extra?: Record<string, string[]>;
  expired?: boolean;
}

export type Obj = { metadata: { name: string; namespace?: string; resourceVersion?: string; uid?: string; [k: string]: unknown }; [k: string]: unknown };

interface Resource { kind: string; list: string; apiVersion: string; namespaced: boolean; prefix: string; statusSubresource?: boolean }

const RESOURCES: Record<string, Resource> = {
  pods: { kind: 'Pod', list: 'PodList', apiVersion: 'v1', namespaced: true, prefix: '/api/v1' },
  secrets: { kind: 'Secret', list: 'SecretList', apiVersion: 'v1', namespaced: true, prefix: '/api/v1' },
  configmaps: { kind: 'ConfigMap', list: 'ConfigMapList', apiVersion: 'v1', namespaced: true, prefix: '/api/v1' },
  namespaces: { kind: 'Namespace', list: 'NamespaceList', apiVersion: 'v1', namespaced: false, prefix: '/api/v1' },
  nodes: { kind: 'Node', list: 'NodeList', apiVersion: 'v1', namespaced: false, prefix: '/api/v1' },
  services: { kind: 'Service', list: 'ServiceList', apiVersion: 'v1', namespaced: true, prefix: '/api/v1' },
  endpointslices: { kind: 'EndpointSlice', list: 'EndpointSliceList', apiVersion: 'discovery.k8s.io/v1', namespaced: true, prefix: '/apis/discovery.k8s.io/v1' },
  meshpolicies: { kind: 'MeshPolicy', list: 'MeshPolicyList', apiVersion: 'meshlet.dev/v1alpha1', namespaced: true, prefix: '/apis/meshlet.dev/v1alpha1', statusSubresource: true },
  // The address table's slices (addresses/slices.ts) and the Lease its controllers elect a leader with.
  meshaddressslices: { kind: 'MeshAddressSlice', list: 'MeshAddressSliceList', apiVersion: 'meshlet.dev/v1alpha1', namespaced: true, prefix: '/apis/meshlet.dev/v1alpha1' },
  leases: { kind: 'Lease', list: 'LeaseList', apiVersion: 'coordination.k8s.io/v1', namespaced: true, prefix: '/apis/coordination.k8s.io/v1' },
  // What `meshlet check` reads of the install; RBAC objects also decide SubjectAccessReviews.
  clusterroles: { kind: 'ClusterRole', list: 'ClusterRoleList', apiVersion: 'rbac.authorization.k8s.io/v1', namespaced: false, prefix: '/apis/rbac.authorization.k8s.io/v1' },
  clusterrolebindings: { kind: 'ClusterRoleBinding', list: 'ClusterRoleBindingList', apiVersion: 'rbac.authorization.k8s.io/v1', namespaced: false, prefix: '/apis/rbac.authorization.k8s.io/v1' },
  roles: { kind: 'Role', list: 'RoleList', apiVersion: 'rbac.authorization.k8s.io/v1', namespaced: true, prefix: '/apis/rbac.authorization.k8s.io/v1' },
  rolebindings: { kind: 'RoleBinding', list: 'RoleBindingList', apiVersion: 'rbac.authorization.k8s.io/v1', namespaced: true, prefix: '/apis/rbac.authorization.k8s.io/v1' },
  // What `meshlet check` reads of the install.
  daemonsets: { kind: 'DaemonSet', list: 'DaemonSetList', apiVersion: 'apps/v1', namespaced: true, prefix: '/apis/apps/v1' },
  deployments: { kind: 'Deployment', list: 'DeploymentList', apiVersion: 'apps/v1', namespaced: true, prefix: '/apis/apps/v1' },
  customresourcedefinitions: { kind: 'CustomResourceDefinition', list: 'CustomResourceDefinitionList', apiVersion: 'apiextensions.k8s.io/v1', namespaced: false, prefix: '/apis/apiextensions.k8s.io/v1' },
};

type EventType = 'ADDED' | 'MODIFIED' | 'DELETED';
interface StoredEvent { rv: number; resource: string; type: EventType; obj: Obj; prev?: Obj }
interface Watcher {
  resource: string;
  namespace: string | undefined;
  selectors: FieldTerm[];
  bookmarks: boolean;
  res: http.ServerResponse;
  timer?: NodeJS.Timeout;
}

const STAND_IN_TOKEN = 'stand-in-client-token';

export class ApiStandIn {
  readonly server: http.Server;
  readonly tokens = new Map<string, TokenInfo>();
  readonly requests: Array<{ method: string; path: string }> = [];
  /** The bearer token clients (the CA, agents) must present. */
  readonly clientToken = STAND_IN_TOKEN;
  /** When true every request fails at the TCP level, like an apiserver that is down. */
  down = false;
  /** Resources whose API is not installed (a CRD not applied yet): 404 like the apiserver. */
  readonly missing = new Set<string>(['meshpolicies']);
  #rv = 100;
  /** Events at or below this resourceVersion are forgotten: watching from there is 410 Gone. */
  #compactedRv = 100;
  readonly #history: StoredEvent[] = [];
  readonly #watchers = new Set<Watcher>();
  readonly #pages = new Map<string, { rv: number; items: Obj[]; offset: number }>();
  readonly #store = new Map<string, Map<string, Obj>>();

  private constructor() {
    this.server = http.createServer((req, res) => this.#handle(req, res));
  }

  static async start(opts: { host?: string; port?: number } = {}): Promise<ApiStandIn> {
    const api = new ApiStandIn();
    await new Promise<void>((resolve) => api.server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve));
    return api;
  }

  get url(): string {
    const a = this.server.address() as { address: string; port: number };
    return `http://${a.address}:${a.port}`;
  }

  get resourceVersion(): string {
    return String(this.#rv);
  }

  /** Open watch streams, per resource (tests wait for an informer to be watching). */
  watching(resource: string): number {
    return [...this.#watchers].filter((w) => w.resource === resource).length;
  }

  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromString(this.kubeConfigYaml());
    return kc;
  }

  /** A kubeconfig file's text for this stand-in (what `--kubeconfig` reads). */
  kubeConfigYaml(): string {
    return standInKubeConfig(this.url);
  }

  async close(): Promise<void> {
    for (const w of this.#watchers) this.#endWatch(w);
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
    if (!RESOURCES[resource]) throw new Error(`the stand-in does not serve ${resource}`);
    const stored = structuredClone(obj);
    const k = key(stored.metadata.namespace, stored.metadata.name);
    const prev = this.#bucket(resource).get(k);
    stored.metadata.resourceVersion = String(++this.#rv);
    stored.metadata.uid ??= prev?.metadata.uid ?? `uid-${resource}-${stored.metadata.namespace ?? ''}-${stored.metadata.name}`;
    this.#bucket(resource).set(k, stored);
    this.#record({ rv: this.#rv, resource, type: prev ? 'MODIFIED' : 'ADDED', obj: stored, ...(prev ? { prev } : {}) });
    return stored;
  }

  /** Changes an object in place through a function of its current state (a MODIFIED event). */
  update(resource: string, namespace: string | undefined, name: string, change: (o: Obj) => void): Obj {
    const current = this.get(resource, namespace, name);
    if (!current) throw new Error(`no ${resource} ${namespace ?? ''}/${name}`);
    const next = structuredClone(current);
    change(next);
    return this.put(resource, next);
  }

  remove(resource: string, namespace: string | undefined, name: string): void {
    const k = key(namespace, name);
    const prev = this.#bucket(resource).get(k);
    if (!prev) return;
    this.#bucket(resource).delete(k);
    // The DELETED event carries the object's last state at the deletion's resourceVersion.
    const obj = structuredClone(prev);
    obj.metadata.resourceVersion = String(++this.#rv);
    this.#record({ rv: this.#rv, resource, type: 'DELETED', obj });
  }

  /** Every PATCH received, in order (what a test checks a client asked for). */
  readonly patches: Array<{ resource: string; name: string; body: unknown }> = [];

  /** Every stored object of a resource (what a test checks a writer produced). */
  all(resource: string): Obj[] {
    return [...this.#bucket(resource).values()];
  }

  get(resource: string, namespace: string | undefined, name: string): Obj | undefined {
    return this.#bucket(resource).get(key(namespace, name));
  }

  /** Sends a BOOKMARK with the current resourceVersion to every watch that asked for bookmarks. */
  bookmark(): void {
    for (const w of this.#watchers) {
      if (!w.bookmarks) continue;
      const r = RESOURCES[w.resource]!;
      writeEvent(w.res, { type: 'BOOKMARK', object: { kind: r.kind, apiVersion: r.apiVersion, metadata: { resourceVersion: String(this.#rv) } } });
    }
  }

  /** Forgets the event history: a watch resuming from an older resourceVersion gets 410 Gone. */
  compact(): void {
    this.#history.length = 0;
    this.#compactedRv = this.#rv;
  }

  /**
   * What an apiserver does when a watcher fell too far behind: forgets history, sends an ERROR
   * event with a 410 Status on every open watch and ends it. Clients must re-list.
   */
  expireWatches(): void {
    this.compact();
    for (const w of this.#watchers) {
      writeEvent(w.res, { type: 'ERROR', object: statusBody(410, 'Expired', `too old resource version: ${this.#rv} (${this.#rv + 1})`) });
      this.#endWatch(w);
    }
  }

  /** Breaks every open watch connection mid-stream (a reset, no final chunk). */
  breakWatches(): void {
    for (const w of this.#watchers) {
      if (w.timer) clearTimeout(w.timer);
      this.#watchers.delete(w);
      w.res.socket?.destroy();
    }
  }

  #record(ev: StoredEvent): void {
    this.#history.push(ev);
    for (const w of this.#watchers) if (w.resource === ev.resource) this.#deliver(w, ev);
  }

  #deliver(w: Watcher, ev: StoredEvent): void {
    const r = RESOURCES[w.resource]!;
    const inScope = (o: Obj | undefined) => o !== undefined && (w.namespace === undefined || o.metadata.namespace === w.namespace) && matches(o, w.selectors);
    const now = inScope(ev.obj);
    let type: EventType | undefined;
    if (ev.type === 'MODIFIED') {
      // A field selector turns "no longer matches" into DELETED and "now matches" into ADDED.
      const before = inScope(ev.prev);
      type = before && now ? 'MODIFIED' : now ? 'ADDED' : before ? 'DELETED' : undefined;
    } else if (now) {
      type = ev.type;
    }
    if (type) writeEvent(w.res, { type, object: { apiVersion: r.apiVersion, kind: r.kind, ...ev.obj } });
  }

  #endWatch(w: Watcher): void {
    if (w.timer) clearTimeout(w.timer);
    this.#watchers.delete(w);
    w.res.end();
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
    if (p === '/apis/authorization.k8s.io/v1/subjectaccessreviews' && method === 'POST') return this.#accessReview(body, res);
    const { prefix, ns, resource, name, extra } = parsePath(p) ?? {};
    const r = resource ? RESOURCES[resource] : undefined;
    const statusCall = extra === 'status' && r?.statusSubresource === true && name !== undefined;
    if (!r || (extra && !statusCall) || r.prefix !== prefix || (ns !== undefined && !r.namespaced) || this.missing.has(resource!)) {
      return status(res, 404, 'NotFound', `the server could not find the requested resource (${p})`);
    }
    if (statusCall) return this.#status(method, resource!, ns, name!, body, res);
    if (!name && method === 'GET') {
      if (url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1') return this.#watch(resource!, ns, url, res);
      return this.#list(resource!, ns, url, res);
    }
    if (!name && method === 'POST') {
      if (this.get(resource!, ns, body.metadata.name)) return status(res, 409, 'AlreadyExists', `${resource} "${body.metadata.name}" already exists`);
      return json(res, 201, { apiVersion: r.apiVersion, kind: r.kind, ...this.put(resource!, { ...body, metadata: { ...body.metadata, namespace: ns } }) });
    }
    const existing = name ? this.get(resource!, ns, name) : undefined;
    if (method === 'GET') {
      if (!existing) return status(res, 404, 'NotFound', `${resource} "${name}" not found`);
      return json(res, 200, { apiVersion: r.apiVersion, kind: r.kind, ...existing });
    }
    if (method === 'PUT') {
      if (!existing) return status(res, 404, 'NotFound', `${resource} "${name}" not found`);
      const rv = body.metadata?.resourceVersion;
      if (rv && rv !== existing.metadata.resourceVersion) {
        return status(res, 409, 'Conflict', `Operation cannot be fulfilled on ${resource} "${name}": the object has been modified; please apply your changes to the latest version and try again`);
      }
      return json(res, 200, { apiVersion: r.apiVersion, kind: r.kind, ...this.put(resource!, { ...body, metadata: { ...body.metadata, namespace: ns, name: name! } }) });
    }
    if (method === 'PATCH') {
      if (!existing) return status(res, 404, 'NotFound', `${resource} "${name}" not found`);
      this.patches.push({ resource: resource!, name: name!, body });
      // JSON patch (RFC 6902), as kubectl and the clients send it: all operations or none, on the
      // object as it is now (a test may change it as the patch arrives).
      let patched: Obj;
      try {
        patched = applyJsonPatch(this.get(resource!, ns, name!) ?? existing, body);
      } catch (err) {
        return status(res, 422, 'Invalid', `the patch cannot be applied: ${(err as Error).message}`);
      }
      return json(res, 200, { apiVersion: r.apiVersion, kind: r.kind, ...this.put(resource!, { ...patched, metadata: { ...patched.metadata, namespace: ns, name: name! } }) });
    }
    if (method === 'DELETE') {
      if (!existing) return status(res, 404, 'NotFound', `${resource} "${name}" not found`);
      this.remove(resource!, ns, name!);
      return json(res, 200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name, kind: resource } });
    }
    return status(res, 405, 'MethodNotAllowed', `${method} is not supported`);
  }

  /** The status subresource: a JSON patch of which only `.status` is kept, as the apiserver does. */
  #status(method: string, resource: string, ns: string | undefined, name: string, body: any, res: http.ServerResponse): void {
    const r = RESOURCES[resource]!;
    const existing = this.get(resource, ns, name);
    if (!existing) return status(res, 404, 'NotFound', `${resource} "${name}" not found`);
    if (method === 'GET') return json(res, 200, { apiVersion: r.apiVersion, kind: r.kind, ...existing });
    if (method !== 'PATCH') return status(res, 405, 'MethodNotAllowed', `${method} is not supported on status`);
    this.patches.push({ resource: `${resource}/status`, name, body });
    let patched: Obj;
    try {
      patched = applyJsonPatch(existing, body);
    } catch (err) {
      return status(res, 422, 'Invalid', `the patch cannot be applied: ${(err as Error).message}`);
    }
    return json(res, 200, { apiVersion: r.apiVersion, kind: r.kind, ...this.put(resource, { ...existing, status: patched.status }) });
  }

  #selected(resource: string, ns: string | undefined, selectors: FieldTerm[]): Obj[] {
    return [...this.#bucket(resource).entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, o]) => o)
      .filter((o) => ns === undefined || o.metadata.namespace === ns)
      .filter((o) => matches(o, selectors));
  }

  #list(resource: string, ns: string | undefined, url: URL, res: http.ServerResponse): void {
    const r = RESOURCES[resource]!;
    const limit = Number(url.searchParams.get('limit') ?? 0);
    const token = url.searchParams.get('continue');
    let page: { rv: number; items: Obj[]; offset: number };
    if (token) {
      // A continued list is served from the snapshot its first page was taken at, like etcd's.
      const snap = this.#pages.get(token);
      if (!snap) return status(res, 410, 'Expired', 'The provided continue parameter is too old to display a consistent list result.');
      this.#pages.delete(token);
      page = snap;
    } else {
      page = { rv: this.#rv, items: this.#selected(resource, ns, parseFieldSelector(url.searchParams.get('fieldSelector') ?? '')), offset: 0 };
    }
    // The snapshot is kept whole with an offset, not copied per page (150,000 pods in pages of 100).
    const end = limit > 0 ? page.offset + limit : page.items.length;
    const items = page.items.slice(page.offset, end);
    const remaining = page.items.length - Math.min(end, page.items.length);
    const metadata: Record<string, unknown> = { resourceVersion: String(page.rv) };
    if (remaining > 0) {
      const next = Buffer.from(`${page.rv}:${this.#pages.size}:${Math.random()}`).toString('base64url');
      this.#pages.set(next, { rv: page.rv, items: page.items, offset: end });
      metadata.continue = next;
      metadata.remainingItemCount = remaining;
    }
    json(res, 200, { apiVersion: r.apiVersion, kind: r.list, metadata, items });
  }

  #watch(resource: string, ns: string | undefined, url: URL, res: http.ServerResponse): void {
    const selectors = parseFieldSelector(url.searchParams.get('fieldSelector') ?? '');
    const from = url.searchParams.get('resourceVersion') ?? '';
    const fromRv = from === '' || from === '0' ? undefined : Number(from);
    if (fromRv !== undefined && !Number.isInteger(fromRv)) return status(res, 400, 'BadRequest', `invalid resourceVersion ${JSON.stringify(from)}`);
    const w: Watcher = { resource, namespace: ns, selectors, bookmarks: url.searchParams.get('allowWatchBookmarks') === 'true', res };
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked', 'cache-control': 'no-cache, private' });
    res.flushHeaders();
    const r = RESOURCES[resource]!;
    if (fromRv !== undefined && fromRv < this.#compactedRv) {
      // The apiserver answers 200 and then an ERROR event carrying a 410 Status, and ends the stream.
      writeEvent(res, { type: 'ERROR', object: statusBody(410, 'Expired', `too old resource version: ${fromRv} (${this.#compactedRv})`) });
      res.end();
      return;
    }
    if (fromRv === undefined) {
      for (const o of this.#selected(resource, ns, selectors)) writeEvent(res, { type: 'ADDED', object: { apiVersion: r.apiVersion, kind: r.kind, ...o } });
    } else {
      for (const ev of this.#history) if (ev.rv > fromRv && ev.resource === resource) this.#deliver(w, ev);
    }
    this.#watchers.add(w);
    const timeout = Number(url.searchParams.get('timeoutSeconds') ?? 0);
    if (timeout > 0) w.timer = setTimeout(() => this.#endWatch(w), timeout * 1000);
    res.once('close', () => { if (w.timer) clearTimeout(w.timer); this.#watchers.delete(w); });
  }
  /**
   * SubjectAccessReview decided by the RBAC objects stored here, as the RBAC authorizer does: a
   * binding of the subject (a service account by its username) to a role whose rule matches the
   * verb, group, resource (with its subresource) and, where the rule names them, the object's name.
   */
  #accessReview(body: any, res: http.ServerResponse): void {
    const spec = body?.spec ?? {};
    const a = spec.resourceAttributes ?? {};
    const m = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(spec.user ?? '');
    const resource = a.subresource ? `${a.resource}/${a.subresource}` : a.resource;
    const subjectMatches = (b: Obj) => ((b as any).subjects ?? []).some((s: any) => m && s.kind === 'ServiceAccount' && s.namespace === m[1] && s.name === m[2]);
    const roleOf = (b: Obj): Obj | undefined => {
      const ref = (b as any).roleRef;
      return ref?.kind === 'ClusterRole' ? this.get('clusterroles', undefined, ref.name) : this.get('roles', b.metadata.namespace, ref?.name);
    };
    const ruleMatches = (r: any) => (r.apiGroups ?? []).includes(a.group ?? '') && (r.resources ?? []).includes(resource) && (r.verbs ?? []).includes(a.verb)
      && (!r.resourceNames || (a.name !== undefined && r.resourceNames.includes(a.name)));
    const bindings = [...this.#selected('clusterrolebindings', undefined, []), ...this.#selected('rolebindings', undefined, [])
      .filter((b) => a.namespace !== undefined && b.metadata.namespace === a.namespace)];
    const allowed = bindings.some((b) => subjectMatches(b) && ((roleOf(b) as any)?.rules ?? []).some(ruleMatches));
    json(res, 201, { apiVersion: 'authorization.k8s.io/v1', kind: 'SubjectAccessReview', metadata: {}, spec, status: { allowed, ...(allowed ? { reason: 'RBAC: allowed by a binding' } : {}) } });
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

/** A kubeconfig for a stand-in at `url` (plain HTTP, hence insecure-skip-tls-verify, which client-node requires for http). */
export function standInKubeConfig(url: string, token = STAND_IN_TOKEN): string {
  return JSON.stringify({
    apiVersion: 'v1', kind: 'Config',
    clusters: [{ name: 'stand-in', cluster: { server: url, 'insecure-skip-tls-verify': true } }],
    users: [{ name: 'meshlet', user: { token } }],
    contexts: [{ name: 'stand-in', context: { cluster: 'stand-in', user: 'meshlet' } }],
    'current-context': 'stand-in',
  });
}

function key(namespace: string | undefined, name: string): string {
  return `${namespace ?? ''}/${name}`;
}

/** A path's parts; `extra` is what follows the name (a subresource such as `status`), if anything. */
function parsePath(p: string): { prefix: string; ns?: string; resource: string; name?: string; extra?: string } | undefined {
  const m = /^(\/api\/v1|\/apis\/[^/]+\/[^/]+)\/(.+)$/.exec(p);
  if (!m) return undefined;
  const parts = m[2]!.split('/');
  if (parts[0] === 'namespaces' && parts.length >= 3) {
    return { prefix: m[1]!, ns: parts[1]!, resource: parts[2]!, ...(parts[3] ? { name: parts[3] } : {}), ...(parts.length > 4 ? { extra: parts.slice(4).join('/') } : {}) };
  }
  return { prefix: m[1]!, resource: parts[0]!, ...(parts[1] ? { name: parts[1] } : {}), ...(parts.length > 2 ? { extra: parts.slice(2).join('/') } : {}) };
}

interface FieldTerm { path: string; op: '=' | '!='; value: string }

function field(o: Obj, path: string): string {
  const v = path.split('.').reduce<any>((v, k) => v?.[k], o);
  // The apiserver compares the field's string form; an absent field is "".
  return v === undefined || v === null ? '' : String(v);
}

function matches(o: Obj, selectors: FieldTerm[]): boolean {
  return selectors.every(({ path, op, value }) => (field(o, path) === value) === (op === '='));
}

function parseFieldSelector(text: string): FieldTerm[] {
  if (!text) return [];
  return text.split(',').map((term) => {
    const m = /^([a-zA-Z.]+)(!=|==|=)(.*)$/.exec(term);
    if (!m) throw new Error(`invalid field selector term ${JSON.stringify(term)}`);
    return { path: m[1]!, op: m[2] === '!=' ? '!=' : '=', value: m[3]! };
  });
}

function writeEvent(res: http.ServerResponse, event: { type: string; object: unknown }): void {
  if (!res.writableEnded) res.write(JSON.stringify(event) + '\n');
}

function statusBody(code: number, reason: string, message: string): object {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
}

function json(res: http.ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function status(res: http.ServerResponse, code: number, reason: string, message: string): void {
  json(res, code, statusBody(code, reason, message));
}

/** A running pod as the apiserver returns it (the fields meshlet reads, plus typical ones it drops). */
export function podObject(opts: {
  name: string; namespace: string; node: string; serviceAccount?: string; ip?: string; ips?: string[]; phase?: string;
  hostNetwork?: boolean; hostIP?: string; annotations?: Record<string, string>; labels?: Record<string, string>;
}): Obj {
  const ips = opts.ips ?? (opts.ip ? [opts.ip] : []);
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: {
      name: opts.name, namespace: opts.namespace, labels: opts.labels ?? { app: opts.name }, creationTimestamp: '2026-11-24T10:00:00Z',
      annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{"apiVersion":"v1","kind":"Pod"}', ...opts.annotations },
      managedFields: [{ manager: 'kubectl', operation: 'Update', apiVersion: 'v1', time: '2026-11-24T10:00:00Z', fieldsType: 'FieldsV1', fieldsV1: { 'f:spec': {} } }],
    },
    spec: {
      nodeName: opts.node, serviceAccountName: opts.serviceAccount ?? 'default', hostNetwork: opts.hostNetwork ?? false,
      containers: [{ name: 'app', image: 'example/app:1', ports: [{ containerPort: 8080, protocol: 'TCP' }], resources: { requests: { cpu: '100m', memory: '128Mi' } } }],
      restartPolicy: 'Always', dnsPolicy: 'ClusterFirst', schedulerName: 'default-scheduler',
    },
    status: {
      phase: opts.phase ?? 'Running', podIP: ips[0], podIPs: ips.map((ip) => ({ ip })), hostIP: opts.hostIP ?? '192.0.2.1',
      conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: '2026-11-24T10:00:05Z' }],
      containerStatuses: [{ name: 'app', ready: true, restartCount: 0, image: 'example/app:1', imageID: 'example/app@sha256:0', containerID: 'containerd://0', state: { running: { startedAt: '2026-11-24T10:00:04Z' } } }],
    },
  };
}

/** A pod as a Deployment creates it: the size of what the apiserver really sends. */
export function deploymentPod(i: number, ns: string, node: string, ip: string): object {
  const app = `app-${i % 50}`;
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: {
      name: `${app}-7d9f8c6b5-${i.toString(36).padStart(5, '0')}`, namespace: ns, generateName: `${app}-7d9f8c6b5-`,
      labels: { app, 'pod-template-hash': '7d9f8c6b5', version: 'v1' },
      annotations: { 'kubectl.kubernetes.io/restartedAt': '2026-11-20T08:00:00Z', 'prometheus.io/scrape': 'true', 'prometheus.io/port': '9090' },
      ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${app}-7d9f8c6b5`, uid: `rs-${app}-${ns}`, controller: true, blockOwnerDeletion: true }],
      creationTimestamp: '2026-11-24T10:00:00Z',
      managedFields: [
        { manager: 'kube-controller-manager', operation: 'Update', apiVersion: 'v1', time: '2026-11-24T10:00:00Z', fieldsType: 'FieldsV1',
          fieldsV1: { 'f:metadata': { 'f:generateName': {}, 'f:labels': { '.': {}, 'f:app': {}, 'f:pod-template-hash': {} }, 'f:ownerReferences': {} }, 'f:spec': { 'f:containers': {}, 'f:volumes': {} } } },
        { manager: 'kubelet', operation: 'Update', apiVersion: 'v1', time: '2026-11-24T10:00:05Z', fieldsType: 'FieldsV1', subresource: 'status',
          fieldsV1: { 'f:status': { 'f:conditions': {}, 'f:containerStatuses': {}, 'f:hostIP': {}, 'f:phase': {}, 'f:podIP': {}, 'f:podIPs': {}, 'f:startTime': {} } } },
      ],
    },
    spec: {
      nodeName: node, serviceAccountName: app, hostNetwork: false, restartPolicy: 'Always', dnsPolicy: 'ClusterFirst',
      schedulerName: 'default-scheduler', terminationGracePeriodSeconds: 30, enableServiceLinks: true, priority: 0,
      securityContext: { runAsNonRoot: true, runAsUser: 1000, fsGroup: 2000 },
      containers: [{
        name: 'app', image: `registry.example.com/team/${app}:1.4.2`, imagePullPolicy: 'IfNotPresent',
        ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }, { name: 'metrics', containerPort: 9090, protocol: 'TCP' }],
        env: Array.from({ length: 8 }, (_, k) => ({ name: `SETTING_${k}`, value: `value-${k}-${app}` })),
        resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '256Mi' } },
        readinessProbe: { httpGet: { path: '/ready', port: 8080, scheme: 'HTTP' }, periodSeconds: 5, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 },
        livenessProbe: { httpGet: { path: '/live', port: 8080, scheme: 'HTTP' }, periodSeconds: 10, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 },
        volumeMounts: [{ name: 'config', mountPath: '/etc/app' }, { name: 'kube-api-access', mountPath: '/var/run/secrets/kubernetes.io/serviceaccount', readOnly: true }],
        terminationMessagePath: '/dev/termination-log', terminationMessagePolicy: 'File',
      }],
      volumes: [
        { name: 'config', configMap: { name: `${app}-config`, defaultMode: 420 } },
        { name: 'kube-api-access', projected: { defaultMode: 420, sources: [{ serviceAccountToken: { expirationSeconds: 3607, path: 'token' } }, { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } }] } },
      ],
      tolerations: [
        { key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 },
        { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 },
      ],
    },
    status: {
      phase: 'Running', podIP: ip, podIPs: [{ ip }], hostIP: `192.0.${Math.floor(i / 250) % 250}.${i % 250}`, startTime: '2026-11-24T10:00:01Z', qosClass: 'Burstable',
      conditions: ['PodReadyToStartContainers', 'Initialized', 'Ready', 'ContainersReady', 'PodScheduled'].map((type) => ({ type, status: 'True', lastProbeTime: null, lastTransitionTime: '2026-11-24T10:00:05Z' })),
      containerStatuses: [{ name: 'app', ready: true, started: true, restartCount: 0, image: `registry.example.com/team/${app}:1.4.2`,
        imageID: `registry.example.com/team/${app}@sha256:${'0'.repeat(64)}`, containerID: `containerd://${'1'.repeat(64)}`, state: { running: { startedAt: '2026-11-24T10:00:04Z' } } }],
    },
  };
}

/** A Node, with the pod ranges the cluster gave it (none: the CNI assigns addresses itself). */
export function nodeObject(name: string, podCIDRs: string[] = []): Obj {
  return {
    apiVersion: 'v1', kind: 'Node',
    metadata: { name, labels: { 'kubernetes.io/hostname': name } },
    spec: { ...(podCIDRs.length > 0 ? { podCIDR: podCIDRs[0], podCIDRs } : {}) },
    status: { addresses: [{ type: 'InternalIP', address: '192.0.2.1' }], conditions: [{ type: 'Ready', status: 'True' }] },
  };
}

/** A namespace, opted in to capture when `capture` is set. */
export function namespaceObject(name: string, capture?: 'enabled' | 'disabled'): Obj {
  return {
    apiVersion: 'v1', kind: 'Namespace',
    metadata: { name, labels: { 'kubernetes.io/metadata.name': name }, ...(capture ? { annotations: { 'meshlet.dev/capture': capture } } : {}) },
    spec: { finalizers: ['kubernetes'] }, status: { phase: 'Active' },
  };
}

/** A ClusterIP Service as the apiserver returns it. */
export function serviceObject(opts: {
  name: string; namespace: string; clusterIP: string; ports: Array<{ name?: string; port: number; targetPort?: number | string; protocol?: string }>;
  selector?: Record<string, string>; trafficDistribution?: string; type?: string;
}): Obj {
  return {
    apiVersion: 'v1', kind: 'Service',
    metadata: { name: opts.name, namespace: opts.namespace, creationTimestamp: '2026-11-24T10:00:00Z' },
    spec: {
      type: opts.type ?? 'ClusterIP', clusterIP: opts.clusterIP, clusterIPs: [opts.clusterIP], ipFamilies: ['IPv4'], sessionAffinity: 'None',
      ports: opts.ports.map((p) => ({ protocol: p.protocol ?? 'TCP', ...(p.name ? { name: p.name } : {}), port: p.port, targetPort: p.targetPort ?? p.port })),
      ...(opts.selector ? { selector: opts.selector } : {}),
      ...(opts.trafficDistribution ? { trafficDistribution: opts.trafficDistribution } : {}),
    },
    status: { loadBalancer: {} },
  };
}

/** An EndpointSlice of a Service (label kubernetes.io/service-name), as the controller writes it. */
export function endpointSliceObject(opts: {
  name: string; namespace: string; service: string; addressType?: string;
  endpoints: Array<{ ip: string; node?: string; ready?: boolean | null }>; ports: Array<{ name?: string; port: number; protocol?: string }>;
}): Obj {
  return {
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
    metadata: {
      name: opts.name, namespace: opts.namespace,
      labels: { 'kubernetes.io/service-name': opts.service, 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' },
    },
    addressType: opts.addressType ?? 'IPv4',
    endpoints: opts.endpoints.map((e) => ({
      addresses: [e.ip],
      // null leaves the condition out: the API reads a missing "ready" as ready.
      conditions: e.ready === null ? {} : { ready: e.ready ?? true, serving: e.ready ?? true, terminating: false },
      ...(e.node ? { nodeName: e.node } : {}),
      targetRef: { kind: 'Pod', namespace: opts.namespace, name: `pod-${e.ip}` },
    })),
    ports: opts.ports.map((p) => ({ name: p.name ?? '', port: p.port, protocol: p.protocol ?? 'TCP' })),
  };
}

/** RFC 6902 on a copy: test, remove, add, replace; a failed test or a missing path throws. */
function applyJsonPatch(target: Obj, ops: unknown): Obj {
  if (!Array.isArray(ops)) throw new Error('a JSON patch is an array of operations');
  const doc = structuredClone(target);
  for (const op of ops as Array<{ op: string; path: string; value?: unknown }>) {
    const parts = op.path.split('/').slice(1).map((t) => t.replace(/~1/g, '/').replace(/~0/g, '~'));
    const last = parts.pop();
    let parent: any = doc;
    for (const p of parts) {
      parent = parent?.[Array.isArray(parent) ? Number(p) : p];
      if (parent === undefined) throw new Error(`no ${op.path}`);
    }
    if (last === undefined) throw new Error('the whole document cannot be patched');
    const index = Array.isArray(parent) ? (last === '-' ? parent.length : Number(last)) : undefined;
    const current = index !== undefined ? parent[index] : parent[last];
    if (op.op === 'test') {
      if (JSON.stringify(current) !== JSON.stringify(op.value)) throw new Error(`test failed at ${op.path}`);
    } else if (op.op === 'remove') {
      if (current === undefined) throw new Error(`no ${op.path} to remove`);
      if (index !== undefined) parent.splice(index, 1); else delete parent[last];
    } else if (op.op === 'add') {
      if (index !== undefined) parent.splice(index, 0, op.value); else parent[last] = op.value;
    } else if (op.op === 'replace') {
      if (current === undefined) throw new Error(`no ${op.path} to replace`);
      if (index !== undefined) parent[index] = op.value; else parent[last] = op.value;
    } else {
      throw new Error(`unsupported operation ${op.op}`);
    }
  }
  return doc;
}
