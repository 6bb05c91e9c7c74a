// Per-identity certificates for this node's captured workloads: issued ahead of need, renewed at half
// life off the data path, and fail-closed when missing or expired. The data plane receives them as
// material in its snapshots (materials()) and builds its TLS contexts itself (proxy/identities.ts).
import { backoffMs } from '../backoff.ts';
import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { NoCertificateError } from '../errors.ts';
import { createCsr, generateKey, type KeyAlgorithm } from './ca.ts';
import { bundleSize, parseBundle } from './pem.ts';
import type { CertificateProvider, TrustBundle } from './provider.ts';
import { signingRootOf } from './roots.ts';
import type { IdentityMaterial } from '../proxy/snapshot.ts';

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): { unref?(): void } | unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, Math.min(ms, 2 ** 31 - 1)).unref(),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface AvailableCert {
  state: 'available';
  spiffeId: string;
  certChainPem: string;
  trustBundlePem: string;
  notBefore: number;
  notAfter: number;
  /** When this agent received it; renewal is timed from here (CAs backdate notBefore for skew). */
  receivedAt: number;
  serial: string;
  /** Changes with a new certificate, or a new trust bundle for the same one. */
  revision: number;
  /** SHA-256 fingerprint of the bundle root that signed the leaf. */
  signedBy: string | undefined;
  /** The trust bundle, parsed once per revision. */
  roots: X509Certificate[];
  privateKeyPem: string;
}

export type CertState =
  | { state: 'pending'; spiffeId: string; attempts: number; lastError?: string }
  | AvailableCert
  | { state: 'unavailable'; spiffeId: string; reason: string };

interface Entry {
  current: CertState;
  /** Last issued cert, kept while renewing so traffic goes on until its notAfter. */
  last?: AvailableCert;
  timer?: unknown;
  attempts: number;
}

export interface CertificateManagerOptions {
  provider: CertificateProvider;
  log: Logger;
  clock?: Clock;
  /** Retry delays after a failed issuance: min * 2^attempt, capped at max. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Fraction of lifetime after which renewal starts (0.5 = half life). */
  renewAt?: number;
  /** When the signing root changes, re-issues are spread over this long so the CA is not stormed. */
  rootChangeSpreadMs?: number;
  /** The workloads' keys (ECDSA P-256 unless told). */
  keyAlgorithm?: KeyAlgorithm;
}

let revisions = 0;

export class CertificateManager extends EventEmitter<{ change: [CertState] }> {
  readonly #entries = new Map<string, Entry>();
  readonly #provider: CertificateProvider;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #retryMin: number;
  readonly #retryMax: number;
  readonly #renewAt: number;
  readonly #rootChangeSpread: number;
  readonly #keyAlgorithm: KeyAlgorithm;
  readonly #unwatch: (() => void) | undefined;
  #bundle: TrustBundle | undefined;
  #closed = false;

  constructor(opts: CertificateManagerOptions) {
    super();
    this.#provider = opts.provider;
    this.#log = opts.log.child({ component: 'certs' });
    this.#clock = opts.clock ?? systemClock;
    this.#retryMin = opts.retryMinMs ?? 500;
    this.#retryMax = opts.retryMaxMs ?? 30_000;
    this.#renewAt = opts.renewAt ?? 0.5;
    this.#rootChangeSpread = opts.rootChangeSpreadMs ?? 5_000;
    this.#keyAlgorithm = opts.keyAlgorithm ?? 'ecdsa-p256';
    this.#unwatch = opts.provider.watchBundle?.((b) => this.#onBundle(b));
  }

  /** The newest trust bundle the provider reported (undefined for providers that do not watch). */
  get trustBundle(): TrustBundle | undefined {
    return this.#bundle;
  }

  /** Makes the set of managed identities equal `spiffeIds`: new ones are issued now, gone ones dropped. */
  reconcile(spiffeIds: Iterable<string>): void {
    const want = new Set(spiffeIds);
    for (const [id, entry] of this.#entries) {
      if (!want.has(id)) {
        if (entry.timer !== undefined) this.#clock.clearTimeout(entry.timer);
        this.#entries.delete(id);
        this.#log.info({ spiffeId: id }, 'identity no longer on this node; certificate dropped');
      }
    }
    for (const id of want) {
      if (this.#entries.has(id)) continue;
      const entry: Entry = { current: { state: 'pending', spiffeId: id, attempts: 0 }, attempts: 0 };
      this.#entries.set(id, entry);
      void this.#issue(id, entry);
    }
  }

  /** The certificate `spiffeId` presents now, or NoCertificateError. */
  assertAvailable(spiffeId: string): AvailableCert {
    const entry = this.#entries.get(spiffeId);
    if (!entry) throw new NoCertificateError(spiffeId, 'identity is not managed on this node');
    const cert = serving(entry);
    if (!cert) throw new NoCertificateError(spiffeId, missingReason(entry));
    if (this.#clock.now() >= cert.notAfter) throw new NoCertificateError(spiffeId, `certificate expired at ${new Date(cert.notAfter).toISOString()}`);
    return cert;
  }

  /**
   * Every managed identity as the data plane receives it (proxy/snapshot.ts): key and chain, or
   * why there is none. An expired certificate is handed over as it is: the data plane refuses it
   * at use, by its own clock.
   */
  materials(): IdentityMaterial[] {
    return [...this.#entries].map(([spiffeId, entry]): IdentityMaterial => {
      const c = serving(entry);
      return c
        ? { state: 'available', spiffeId, certChainPem: c.certChainPem, privateKeyPem: c.privateKeyPem, trustBundlePem: c.trustBundlePem, notAfter: c.notAfter, revision: c.revision }
        : { state: 'missing', spiffeId, reason: missingReason(entry) };
    });
  }

  /** True when every managed identity has a valid certificate (readiness). */
  get allReady(): boolean {
    for (const id of this.#entries.keys()) {
      try { this.assertAvailable(id); } catch { return false; }
    }
    return true;
  }

  pendingIdentities(): string[] {
    return [...this.#entries.keys()].filter((id) => {
      try { this.assertAvailable(id); return false; } catch { return true; }
    });
  }

  states(): CertState[] {
    return [...this.#entries.values()].map((e) => e.current);
  }

  close(): void {
    this.#closed = true;
    this.#unwatch?.();
    for (const entry of this.#entries.values()) if (entry.timer !== undefined) this.#clock.clearTimeout(entry.timer);
    this.#entries.clear();
  }

  async #issue(id: string, entry: Entry): Promise<void> {
    if (this.#closed || this.#entries.get(id) !== entry) return;
    try {
      const { privateKeyPem } = await generateKey(this.#keyAlgorithm);
      const csr = createCsr(privateKeyPem, id);
      const issued = await this.#provider.issue(csr, id);
      if (this.#closed || this.#entries.get(id) !== entry) return;
      const leaf = new X509Certificate(issued.certChainPem);
      if (!leaf.subjectAltName?.split(', ').includes(`URI:${id}`)) {
        throw new Error(`issued certificate does not carry ${id}`);
      }
      const receivedAt = this.#clock.now();
      // During a root rotation the watched bundle may be newer than the one in the answer: use it
      // when it covers the new certificate.
      const watched = this.#bundle?.pem;
      const bundlePem = watched && signingRootOf(issued.certChainPem, parseBundle(watched)) ? watched : issued.trustBundlePem;
      const cert = withBundle({
        state: 'available',
        spiffeId: id,
        certChainPem: issued.certChainPem,
        trustBundlePem: bundlePem,
        notBefore: Date.parse(leaf.validFrom),
        receivedAt,
        notAfter: Date.parse(leaf.validTo),
        serial: leaf.serialNumber,
        revision: 0,
        signedBy: undefined,
        roots: [],
        privateKeyPem,
      }, bundlePem);
      if (!cert.signedBy) throw new Error('issued certificate does not chain to the trust bundle');
      entry.current = cert;
      entry.last = cert;
      entry.attempts = 0;
      this.#log.info({ spiffeId: id, serial: cert.serial, notAfter: new Date(cert.notAfter).toISOString(), provider: this.#provider.name }, 'certificate issued');
      this.emit('change', cert);
      this.#scheduleRenewal(id, entry, cert);
    } catch (err) {
      if (this.#closed || this.#entries.get(id) !== entry) return;
      entry.attempts++;
      const message = (err as Error).message;
      if (entry.current.state !== 'available') entry.current = { state: 'pending', spiffeId: id, attempts: entry.attempts, lastError: message };
      const backoff = backoffMs(entry.attempts, this.#retryMin, this.#retryMax);
      const retryAfter = (err as { retryAfterMs?: unknown }).retryAfterMs;
      const delay = typeof retryAfter === 'number' ? Math.max(backoff, retryAfter) : backoff;
      this.#log.warn({ spiffeId: id, attempts: entry.attempts, retryInMs: delay, err: message }, 'certificate issuance failed');
      this.emit('change', entry.current);
      entry.timer = this.#clock.setTimeout(() => void this.#issue(id, entry), jitter(delay));
    }
  }

  /**
   * Timed from arrival (or the real notBefore if later): CAs backdate certificates for clock skew,
   * and half of a backdated lifetime could already be over on arrival.
   */
  #scheduleRenewal(id: string, entry: Entry, cert: AvailableCert): void {
    const start = Math.min(Math.max(cert.notBefore, cert.receivedAt), cert.notAfter);
    const renewAt = start + (cert.notAfter - start) * this.#renewAt;
    const delay = Math.max(0, renewAt - this.#clock.now());
    if (entry.timer !== undefined) this.#clock.clearTimeout(entry.timer);
    entry.timer = this.#clock.setTimeout(() => void this.#issue(id, entry), jitter(delay, 0.05));
  }

  /**
   * Root rotation. A new bundle is trusted at once (contexts rebuilt, established sessions untouched);
   * certificates signed by a root other than the current signing root are re-issued soon, spread out.
   */
  #onBundle(bundle: TrustBundle): void {
    if (this.#closed) return;
    const changed = this.#bundle?.pem !== bundle.pem || this.#bundle?.signingFingerprint !== bundle.signingFingerprint;
    this.#bundle = bundle;
    let reissue = 0;
    for (const [id, entry] of this.#entries) {
      const cert = entry.current.state === 'available' ? entry.current : undefined;
      if (!cert) continue;
      let updated: AvailableCert;
      try {
        updated = cert.trustBundlePem === bundle.pem ? cert : withBundle({ ...cert }, bundle.pem);
      } catch (err) {
        this.#log.error({ spiffeId: id, err: (err as Error).message }, 'new trust bundle is unusable; keeping the old one');
        continue;
      }
      if (updated !== cert) {
        entry.current = updated;
        entry.last = updated;
        this.emit('change', updated);
      }
      // Only on a change: a certificate already being re-issued is not pushed back again.
      if (changed && updated.signedBy !== bundle.signingFingerprint) {
        reissue++;
        if (entry.timer !== undefined) this.#clock.clearTimeout(entry.timer);
        entry.timer = this.#clock.setTimeout(() => void this.#issue(id, entry), Math.round(Math.random() * this.#rootChangeSpread));
      }
    }
    if (changed) this.#log.info({ signingRoot: bundle.signingFingerprint, roots: bundleSize(bundle.pem), reissue }, 'trust bundle changed');
  }
}

/** Sets the bundle on a certificate (a new revision). */
function withBundle(cert: AvailableCert, bundlePem: string): AvailableCert {
  cert.trustBundlePem = bundlePem;
  cert.roots = parseBundle(bundlePem);
  cert.signedBy = signingRootOf(cert.certChainPem, cert.roots);
  cert.revision = ++revisions;
  return cert;
}

/** While a renewal is in flight the previous certificate keeps serving until it expires. */
function serving(entry: Entry): AvailableCert | undefined {
  return entry.current.state === 'available' ? entry.current : entry.last;
}

function missingReason(entry: Entry): string {
  const c = entry.current;
  return c.state === 'pending' ? `not issued yet${c.lastError ? ` (${c.lastError})` : ''}` : c.state === 'unavailable' ? c.reason : 'unknown';
}

/** Spreads timers by up to ±fraction so that many workloads do not renew in the same instant. */
function jitter(ms: number, fraction = 0.2): number {
  return Math.max(0, Math.round(ms * (1 - fraction + Math.random() * 2 * fraction)));
}
