// The agent's side of the CA service: a CertificateProvider that sends CSRs over HTTPS (undici) with
// the node's token, and watches the trust bundle for root rotation.
//
// The CA's serving certificate is verified against the roots the agent was given (--trust-bundle,
// in a cluster the ConfigMap the CA publishes) plus the newest bundle the CA itself returned: after
// a root rotation the CA's certificate comes from the new root, which the agent learned during the
// prepare step.
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { Agent, request } from 'undici';
import { CaUnavailableError } from '../errors.ts';
import { parseBundle } from './pem.ts';
import type { CertificateProvider, IssuedCertificate, TrustBundle } from './provider.ts';

/**
 * TLS connections to the CA at most; more requests wait for one (undici's queue). An agent asks for
 * all of its node's certificates at once when it starts: without a cap undici opened a connection,
 * so a TLS handshake on both sides, per request, and the CA refused those past its per-node
 * signing slots, to be retried (bench/README.md, "Fewer connections to the CA").
 */
export const CA_CONNECTIONS = 4;

export interface CaClientOptions {
  url: string;
  tokenFile: string;
  trustBundleFile: string;
  log: Logger;
  /** How often the trust bundle is fetched for rotation. */
  bundlePollMs: number;
  requestTimeoutMs: number;
}

export interface CaClientProvider extends CertificateProvider {
  close(): Promise<void>;
}

export function createCaClientProvider(opts: CaClientOptions): CaClientProvider {
  const log = opts.log.child({ component: 'ca-client' });
  const base = opts.url.replace(/\/+$/, '');
  let dispatcher: Agent | undefined;
  let dispatcherRoots = '';
  let learned = '';
  let current: TrustBundle | undefined;
  const listeners = new Set<(b: TrustBundle) => void>();
  let pollTimer: NodeJS.Timeout | undefined;
  let closed = false;

  /** One dispatcher (connection pool) per set of trusted roots. */
  const client = async (): Promise<Agent> => {
    let fileRoots: string;
    try {
      fileRoots = await readFile(opts.trustBundleFile, 'utf8');
      parseBundle(fileRoots);
    } catch (err) {
      throw new CaUnavailableError(`cannot read the trust bundle ${opts.trustBundleFile}: ${(err as Error).message}`);
    }
    const roots = learned && !fileRoots.includes(learned) ? `${fileRoots.trimEnd()}\n${learned}` : fileRoots;
    if (!dispatcher || roots !== dispatcherRoots) {
      const old = dispatcher;
      dispatcher = new Agent({ connect: { ca: roots, rejectUnauthorized: true, timeout: opts.requestTimeoutMs }, keepAliveTimeout: 30_000, connections: CA_CONNECTIONS });
      dispatcherRoots = roots;
      void old?.close().catch(() => undefined);
    }
    return dispatcher;
  };

  const call = async (method: 'GET' | 'POST', path: string, body?: unknown): Promise<Record<string, unknown>> => {
    const headers: Record<string, string> = {};
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      let token: string;
      try {
        token = (await readFile(opts.tokenFile, 'utf8')).trim();
      } catch (err) {
        throw new CaUnavailableError(`cannot read the token file ${opts.tokenFile}: ${(err as Error).message}`);
      }
      // Read per request: projected ServiceAccount tokens are rotated on disk by the kubelet.
      headers.authorization = `Bearer ${token}`;
    }
    let res;
    try {
      res = await request(`${base}${path}`, {
        method, headers, dispatcher: await client(),
        body: body === undefined ? undefined : JSON.stringify(body),
        headersTimeout: opts.requestTimeoutMs, bodyTimeout: opts.requestTimeoutMs,
      });
    } catch (err) {
      if (err instanceof CaUnavailableError) throw err;
      throw new CaUnavailableError(`cannot reach the CA at ${base}: ${(err as Error).message}`, undefined, { cause: err });
    }
    let doc: Record<string, unknown>;
    try {
      doc = await res.body.json() as Record<string, unknown>;
    } catch {
      throw new CaUnavailableError(`the CA at ${base} answered ${res.statusCode} without JSON`, res.statusCode);
    }
    if (res.statusCode !== 200) {
      const e = (doc.error ?? {}) as { code?: string; message?: string };
      const error = new CaUnavailableError(`the CA refused (${res.statusCode} ${e.code ?? 'unknown'}): ${e.message ?? ''}`, res.statusCode);
      const retryAfter = Number(res.headers['retry-after']);
      if (Number.isFinite(retryAfter) && retryAfter > 0) error.retryAfterMs = retryAfter * 1000;
      throw error;
    }
    return doc;
  };

  const publish = (pem: unknown, signingRoot: unknown): void => {
    if (typeof pem !== 'string' || typeof signingRoot !== 'string') return;
    try {
      parseBundle(pem);
    } catch (err) {
      log.error({ err: (err as Error).message }, 'the CA sent an unusable trust bundle; ignored');
      return;
    }
    learned = pem;
    if (current?.pem === pem && current.signingFingerprint === signingRoot) return;
    current = { pem, signingFingerprint: signingRoot };
    for (const l of listeners) l(current);
  };

  const poll = async (): Promise<void> => {
    try {
      const doc = await call('GET', '/v1/trust-bundle');
      publish(doc.trustBundle, doc.signingRoot);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'cannot fetch the trust bundle; keeping the current one');
    }
    if (!closed && listeners.size > 0) pollTimer = setTimeout(() => void poll(), opts.bundlePollMs).unref();
  };

  return {
    name: 'ca-service',
    async issue(csrPem: string, spiffeId: string): Promise<IssuedCertificate> {
      const doc = await call('POST', '/v1/certificates', { csr: csrPem });
      if (doc.spiffeId !== spiffeId || typeof doc.certificateChain !== 'string' || typeof doc.trustBundle !== 'string') {
        throw new CaUnavailableError(`the CA answered with a malformed certificate response for ${spiffeId}`, 200);
      }
      publish(doc.trustBundle, doc.signingRoot);
      return { certChainPem: doc.certificateChain, trustBundlePem: doc.trustBundle };
    },
    watchBundle(listener) {
      listeners.add(listener);
      if (current) listener(current);
      if (listeners.size === 1 && !closed) void poll();
      return () => {
        listeners.delete(listener);
        if (listeners.size === 0) clearTimeout(pollTimer);
      };
    },
    async close() {
      closed = true;
      clearTimeout(pollTimer);
      listeners.clear();
      await dispatcher?.close().catch(() => undefined);
    },
  };
}
