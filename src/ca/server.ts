// `meshlet ca serve`: the CA as an HTTPS service. Agents send one CSR per request with their node
// token; the CA checks the CSR, who holds the token, and that the holder's node runs a pod with the
// requested identity, then signs.
//
//   POST /v1/certificates   Authorization: Bearer <token>   {"csr": "<PEM>"}
//        200 {"spiffeId", "certificateChain", "trustBundle", "signingRoot", "notAfter"}
//        4xx/5xx {"error": {"code", "message"}}   (codes: docs/errors.md)
//   GET  /v1/trust-bundle   200 {"trustBundle", "signingRoot"}   (public: roots are no secret)
//   GET  /healthz/ready     200 once roots are loaded and the authorizer can answer
//
// Refusals are cheap and come first (rate, size, token), so a flood of garbage costs the CA little
// and other clients are still served.
import { createPublicKey } from 'node:crypto';
import https from 'node:https';
import type http from 'node:http';
import type { Logger } from 'pino';
import {
  AuthorizerUnavailableError, BadCaRequestError, BodyTooLargeError, CaError, CaRefusal, RateLimitedError, SlowRequestError, TokenRejectedError,
} from '../errors.ts';
import { CaSigner, generateKey, keyAlgorithmOf, parseWorkloadCsr } from '../identity/ca.ts';
import { bundleSize } from '../identity/pem.ts';
import { loadRootSet, type RootSet, type RootStore } from '../identity/roots.ts';
import type { NodeAuthorizer } from './authorizer.ts';
import { RateLimiter, SlotLimiter } from '../rate-limit.ts';


export interface CaServiceOptions {
  store: RootStore;
  authorizer: NodeAuthorizer;
  log: Logger;
  certTtlMs: number;
  /** DNS names and IPs of the serving certificate (what agents put in --ca-url). */
  servingNames: string[];
  maxBodyBytes: number;
  ratePerSecond: number;
  burst: number;
  /** Signing requests in progress at once; more are refused with 429 rather than queued. */
  maxInFlight?: number;
  /**
   * Requests in progress at once per client: per address before its token is checked, per node
   * after. A compromised node or one noisy address can only use its own share.
   */
  maxPerClient?: number;
  /** How often the root store is re-read (root rotation). */
  reloadMs: number;
  /** Called with every new root set (the Kubernetes mode publishes the bundle ConfigMap). */
  onRoots?: (roots: RootSet) => Promise<void> | void;
  /** Told each request's outcome and duration (the CA's metrics). */
  onRequest?: (outcome: string, seconds: number) => void;
}

export interface CaStats {
  issued: number;
  refused: Record<string, number>;
}

const SERVING_TTL_MS = 24 * 3_600_000;

export class CaService {
  readonly stats: CaStats = { issued: 0, refused: {} };
  readonly server: https.Server;
  readonly #opts: CaServiceOptions;
  readonly #log: Logger;
  readonly #limiter: RateLimiter;
  /** Requests having their token checked, per client address (no total: they hold no slot). */
  readonly #authenticating: SlotLimiter;
  /** Signing slots: all of them, and per node. */
  readonly #signing: SlotLimiter;
  #roots: RootSet;
  #signer: CaSigner;
  #servingKeyPem: string;
  #reloadTimer: NodeJS.Timeout | undefined;
  /** Roots not yet handed to onRoots successfully (retried on every reload). */
  #unpublished: RootSet | undefined;
  #servingTimer: NodeJS.Timeout | undefined;

  private constructor(opts: CaServiceOptions, roots: RootSet, servingKeyPem: string) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: 'ca' });
    this.#limiter = new RateLimiter({ ratePerSecond: opts.ratePerSecond, burst: opts.burst });
    const perClient = opts.maxPerClient ?? 32;
    this.#authenticating = new SlotLimiter({ maxConnections: Number.MAX_SAFE_INTEGER, maxPerSource: perClient });
    this.#signing = new SlotLimiter({ maxConnections: opts.maxInFlight ?? 256, maxPerSource: perClient });
    this.#roots = roots;
    this.#signer = new CaSigner(roots.signing);
    this.#servingKeyPem = servingKeyPem;
    this.server = https.createServer({
      ...this.#servingMaterial(),
      minVersion: 'TLSv1.2',
      // A client that stalls its handshake, trickles headers or a body cannot hold a connection long.
      handshakeTimeout: 5_000,
      headersTimeout: 5_000,
      requestTimeout: 10_000,
      // Node enforces the two timeouts above only when it checks its connections, every 30 s by
      // default: 256 trickling clients held every slot for 25 s and more. Check every second.
      connectionsCheckingInterval: 1_000,
      maxHeaderSize: 8192,
    }, (req, res) => void this.#handle(req, res));
    this.server.on('tlsClientError', (err) => this.#log.debug({ err: err.message }, 'TLS handshake with a client failed'));
    this.#scheduleServingRenewal();
  }

  static async start(opts: CaServiceOptions): Promise<CaService> {
    const roots = await loadRootSet(opts.store);
    // The serving key is of the root's kind: a client that verifies one verifies the other.
    const { privateKeyPem: privateKey } = await generateKey(keyAlgorithmOf(roots.signing.keyPem));
    await opts.authorizer.start();
    const service = new CaService(opts, roots, privateKey);
    service.#unpublished = roots;
    await service.#publish();
    service.#reloadTimer = setTimeout(() => void service.#reload(), opts.reloadMs).unref();
    return service;
  }

  listen(port: number, host: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ port, host }, () => { this.server.off('error', reject); resolve(); });
    });
  }

  async close(): Promise<void> {
    clearTimeout(this.#reloadTimer);
    clearTimeout(this.#servingTimer);
    await new Promise<void>((resolve) => { this.server.close(() => resolve()); this.server.closeAllConnections(); });
    await this.#opts.authorizer.close();
  }

  #servingMaterial(): { key: string; cert: string } {
    const publicKeyPem = createPublicKey(this.#servingKeyPem).export({ type: 'spki', format: 'pem' }).toString();
    const cert = this.#signer.signServing(publicKeyPem, { names: this.#opts.servingNames, ttlMs: SERVING_TTL_MS });
    return { key: this.#servingKeyPem, cert: cert + this.#roots.signing.certPem };
  }

  #scheduleServingRenewal(): void {
    clearTimeout(this.#servingTimer);
    this.#servingTimer = setTimeout(() => {
      this.server.setSecureContext(this.#servingMaterial());
      this.#scheduleServingRenewal();
    }, SERVING_TTL_MS / 2).unref();
  }

  /** Re-reads the root store; a broken store keeps the last good roots in force. */
  async #reload(): Promise<void> {
    try {
      const next = await loadRootSet(this.#opts.store);
      const cur = this.#roots;
      if (next.trustDomain !== cur.trustDomain) throw new CaError(`root store now speaks for trust domain ${next.trustDomain}, not ${cur.trustDomain}`);
      if (next.signingFingerprint !== cur.signingFingerprint || next.trustBundlePem !== cur.trustBundlePem) {
        this.#roots = next;
        this.#signer = new CaSigner(next.signing);
        // The serving certificate follows the signing root so agents can verify it with the new bundle.
        this.server.setSecureContext(this.#servingMaterial());
        this.#scheduleServingRenewal();
        this.#log.info({ signingRoot: next.signingFingerprint, roots: bundleSize(next.trustBundlePem) }, 'root set changed');
        this.#unpublished = next;
      }
    } catch (err) {
      this.#log.error({ err: (err as Error).message }, 'cannot reload the root store; the current roots stay in force');
    }
    await this.#publish();
    this.#reloadTimer = setTimeout(() => void this.#reload(), this.#opts.reloadMs).unref();
  }

  async #publish(): Promise<void> {
    const roots = this.#unpublished;
    if (!roots || !this.#opts.onRoots) return;
    try {
      await this.#opts.onRoots(roots);
      if (this.#unpublished === roots) this.#unpublished = undefined;
    } catch (err) {
      this.#log.error({ err: (err as Error).message }, 'cannot publish the root set; retrying on the next reload');
    }
  }

  /** The trust bundle and the signing root now (the metrics read them at scrape time). */
  get roots(): { trustBundlePem: string; signingFingerprint: string } {
    return this.#roots;
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now();
    const done = (outcome: string) => this.#opts.onRequest?.(outcome, (performance.now() - started) / 1000);
    const remote = req.socket.remoteAddress ?? 'unknown';
    const url = (req.url ?? '').split('?')[0];
    let node: string | undefined;
    let spiffeId: string | undefined;
    try {
      const wait = this.#limiter.take(remote);
      if (wait > 0) throw new RateLimitedError(wait);
      if (url === '/healthz/ready') {
        const ready = this.#opts.authorizer.ready();
        done('healthz');
        return send(res, ready ? 200 : 503, { ready });
      }
      if (url === '/v1/trust-bundle') {
        if (req.method !== 'GET') throw new BadCaRequestError(`${req.method} is not allowed on ${url}`, 405);
        done('trust_bundle');
        return send(res, 200, { trustBundle: this.#roots.trustBundlePem, signingRoot: this.#roots.signingFingerprint });
      }
      if (url !== '/v1/certificates') throw new BadCaRequestError(`no such endpoint ${JSON.stringify(url)}`, 404);
      if (req.method !== 'POST') throw new BadCaRequestError(`${req.method} is not allowed on ${url}`, 405);
      if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) throw new BadCaRequestError('content type must be application/json', 415);
      // Who asks comes from the headers, before any capacity is held for the request: a client
      // without a valid token holds nothing but its connection (and that only briefly).
      const token = bearer(req.headers.authorization);
      const who = await holding(this.#authenticating, remote, () => this.#opts.authorizer.authenticate(token));
      node = who.node;
      const slot = this.#signing.acquire(who.node);
      if ('refused' in slot) throw new RateLimitedError(1);
      try {
        const body = await readBody(req, this.#opts.maxBodyBytes, BODY_DEADLINE_MS);
        const csr = parseCsrRequest(body);
        const parsed = parseWorkloadCsr(csr, this.#roots.trustDomain);
        spiffeId = parsed.spiffeId;
        await this.#opts.authorizer.authorize(who, parsed.spiffeId);
        const roots = this.#roots;
        const certPem = this.#signer.signWorkload(parsed, { ttlMs: this.#opts.certTtlMs });
        this.stats.issued++;
        const notAfter = new Date(Date.now() + this.#opts.certTtlMs).toISOString();
        this.#log.info({ node, subject: who.subject, spiffeId, notAfter }, 'certificate issued');
        done('issued');
        return send(res, 200, { spiffeId, certificateChain: certPem, trustBundle: roots.trustBundlePem, signingRoot: roots.signingFingerprint, notAfter });
      } finally {
        slot.release();
      }
    } catch (err) {
      const refusal = err instanceof CaRefusal ? err : new AuthorizerUnavailableError(`internal error: ${(err as Error).message}`);
      if (!(err instanceof CaRefusal)) this.#log.error({ err: (err as Error).stack }, 'unexpected error while handling a CA request');
      this.stats.refused[refusal.code] = (this.stats.refused[refusal.code] ?? 0) + 1;
      done(refusal.code);
      const level = refusal.code === 'rate_limited' ? 'debug' : 'warn';
      this.#log[level]({ remote, node, spiffeId, err: refusal.code, status: refusal.status, reason: refusal.message }, 'CA request refused');
      const headers: Record<string, string> = {};
      if (refusal instanceof RateLimitedError) headers['retry-after'] = String(refusal.retryAfterSeconds);
      // An unread or oversized body is not worth draining: close the connection after answering.
      if (!req.complete) headers.connection = 'close';
      send(res, refusal.status, { error: { code: refusal.code, message: refusal.message } }, headers);
    }
  }
}

/** Runs `work` holding one of `limiter`'s slots for `key`; refused with 429 when there is none. */
async function holding<T>(limiter: SlotLimiter, key: string, work: () => Promise<T>): Promise<T> {
  const slot = limiter.acquire(key);
  if ('refused' in slot) throw new RateLimitedError(1);
  try {
    return await work();
  } finally {
    slot.release();
  }
}

/** How long a request's body may take to arrive once its headers have (a CSR is a few KB). */
const BODY_DEADLINE_MS = 5_000;

function send(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function bearer(header: string | undefined): string {
  const m = /^Bearer ([A-Za-z0-9._~+/=-]+)$/.exec(header ?? '');
  if (!m) throw new TokenRejectedError(header ? 'Authorization header is not "Bearer <token>"' : 'no Authorization header');
  return m[1] as string;
}

function parseCsrRequest(body: Buffer): string {
  let doc: unknown;
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    throw new BadCaRequestError('body is not JSON');
  }
  const csr = (doc as { csr?: unknown } | null)?.csr;
  if (typeof csr !== 'string') throw new BadCaRequestError('body must be {"csr": "<PEM>"}');
  return csr;
}

/**
 * Reads at most `limit` bytes within `deadlineMs`; a larger declared or actual body is refused
 * without buffering it, a slower one with SlowRequestError (the connection is closed after the answer).
 */
function readBody(req: http.IncomingMessage, limit: number, deadlineMs: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) return Promise.reject(new BodyTooLargeError(limit));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const stop = (err: Error) => {
      clearTimeout(timer);
      req.removeAllListeners('data');
      req.pause();
      reject(err);
    };
    const timer = setTimeout(() => stop(new SlowRequestError(deadlineMs)), deadlineMs);
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) { stop(new BodyTooLargeError(limit)); return; }
      chunks.push(chunk);
    });
    req.on('end', () => { clearTimeout(timer); resolve(Buffer.concat(chunks)); });
    req.on('error', (err) => { clearTimeout(timer); reject(err); });
  });
}
