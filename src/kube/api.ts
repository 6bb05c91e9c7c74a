// The few REST calls the agent and the CA make, on client-node's KubeConfig: its authentication
// (tokens, client certificates, exec plugins, the in-cluster account) and its HTTP dispatcher, the
// way client-node's own Watch calls the API. Not its generated clients: their modules (every API
// group, every model) are most of what the package costs a process to load (bench/README.md,
// "Agent memory in Kubernetes mode"), and the long-running processes read plain JSON anyway.
import type { KubeConfig } from '@kubernetes/client-node';
import { RequestContext } from '@kubernetes/client-node/dist/gen/http/http.js';
import { fetch } from 'undici';

/** A response that was not 2xx; `code` as client-node's ApiException has it, so apiStatus() reads both. */
export class KubeApiError extends Error {
  readonly code: number;
  readonly body: string;
  constructor(method: string, path: string, code: number, body: string) {
    const message = (() => {
      try { return (JSON.parse(body) as { message?: string }).message; } catch { return undefined; }
    })();
    super(`${method} ${path}: HTTP ${code}${message ? `: ${message}` : ''}`);
    this.code = code;
    this.body = body;
  }
}

export type Query = Record<string, string | number | boolean | undefined>;

export const CONTENT = {
  json: 'application/json',
  jsonPatch: 'application/json-patch+json',
} as const;

/** A resource kind: group '' is the core API (/api/v1). */
export interface ApiResource { group: string; version: string; plural: string }

/** The path of a collection, or of one object (and its subresource), names escaped. */
export function apiPath(r: ApiResource, at: { namespace?: string; name?: string; subresource?: string } = {}): string {
  const base = r.group ? `/apis/${r.group}/${r.version}` : `/api/${r.version}`;
  const ns = at.namespace ? `/namespaces/${encodeURIComponent(at.namespace)}` : '';
  const one = at.name ? `/${encodeURIComponent(at.name)}${at.subresource ? `/${at.subresource}` : ''}` : '';
  return `${base}${ns}/${r.plural}${one}`;
}

/** The core kinds meshlet reads and writes. */
export const CORE = {
  pods: { group: '', version: 'v1', plural: 'pods' },
  nodes: { group: '', version: 'v1', plural: 'nodes' },
  secrets: { group: '', version: 'v1', plural: 'secrets' },
  configMaps: { group: '', version: 'v1', plural: 'configmaps' },
} as const satisfies Record<string, ApiResource>;

export interface KubeApi {
  get<T>(path: string, query?: Query): Promise<T>;
  /** `method` with a JSON body (POST, PUT, PATCH with the patch kind's content type). */
  send<T>(method: 'POST' | 'PUT' | 'PATCH', path: string, body: unknown, contentType?: string): Promise<T>;
  /** DELETE, only if the object is still at `resourceVersion` when given (a precondition). */
  remove(path: string, resourceVersion?: string): Promise<void>;
}

/** Without an answer by then a call fails (the typed clients had no limit at all; callers retry). */
const REQUEST_TIMEOUT_MS = 30_000;

export function kubeApi(kc: KubeConfig, timeoutMs = REQUEST_TIMEOUT_MS): KubeApi {
  const call = async <T>(method: string, path: string, query: Query | undefined, body?: { text: string; type: string }): Promise<T> => {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error('the Kubernetes configuration names no current cluster');
    const url = new URL(cluster.server.replace(/\/$/, '') + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const ctx = new RequestContext(url.toString(), method as never);
    await kc.applySecurityAuthentication(ctx);
    const headers = { ...ctx.getHeaders(), accept: CONTENT.json, ...(body ? { 'content-type': body.type } : {}) };
    let res: Awaited<ReturnType<typeof fetch>>;
    try {
      res = await fetch(url, { method, headers, dispatcher: ctx.getDispatcher(), body: body?.text, signal: AbortSignal.timeout(timeoutMs) });
    } catch (err) {
      // undici says only "fetch failed"; the reason is its cause (ECONNREFUSED, a certificate...).
      const e = err as Error & { cause?: { code?: string; message?: string } };
      const why = e.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : `${e.message}${e.cause ? ` (${e.cause.code ?? e.cause.message})` : ''}`;
      throw new Error(`${method} ${path}: ${why}`, { cause: err });
    }
    const text = await res.text();
    if (res.status < 200 || res.status > 299) throw new KubeApiError(method, path, res.status, text);
    return (text ? JSON.parse(text) : undefined) as T;
  };
  return {
    get: (path, query) => call('GET', path, query),
    send: (method, path, body, contentType = CONTENT.json) => call(method, path, undefined, { text: JSON.stringify(body), type: contentType }),
    remove: async (path, resourceVersion) => {
      const options = { apiVersion: 'v1', kind: 'DeleteOptions', ...(resourceVersion ? { preconditions: { resourceVersion } } : {}) };
      await call('DELETE', path, undefined, { text: JSON.stringify(options), type: CONTENT.json });
    },
  };
}
