// The identities a data plane presents, built from the material its snapshots carry: one TLS secure
// context per certificate revision (re-parsing PEM per connection would cost a large share of
// handshake throughput: bench/README.md), and fail-closed when a certificate is missing or expired.
// A context is built when a connection first needs it, not when the snapshot arrives: each holds
// its key, chain and trust store in OpenSSL's memory, once per data-plane thread, whether or not
// its pods talk, and building all of them at once stalled every data plane at a root rotation
// (bench/README.md, "Contexts when first used"). A trust bundle is parsed once for all that share it.
import type { X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContext } from 'node:tls';
import { NoCertificateError } from '../errors.ts';
import { parseBundle } from '../identity/pem.ts';
import type { IdentityMaterial } from './snapshot.ts';

type Material = Extract<IdentityMaterial, { state: 'available' }>;

/** A certificate the data plane can present now: its material, parsed and loaded. */
export interface ServingCert extends Omit<Material, 'state'> {
  /** The trust bundle, parsed once per revision (peer checks on every tunnel session use it). */
  roots: X509Certificate[];
  context: SecureContext;
}

/** What the handlers ask of the identities (tests give their own). */
export interface IdentityView {
  /** The certificate to present as `spiffeId`, or NoCertificateError (never a plaintext fallback). */
  assertAvailable(spiffeId: string): ServingCert;
  secureContextFor(spiffeId: string): SecureContext;
}

/**
 * Issued: the material as published, nothing built yet (no connection has needed it). Available:
 * its context built. Missing: none, or material that did not load (refused until a new revision).
 */
type Entry =
  | { state: 'issued'; material: Material }
  | { state: 'available'; cert: ServingCert }
  | { state: 'missing'; reason: string; revision?: number };

/** The certificate an entry holds (its revision and trust bundle), if any. */
const held = (e: Entry | undefined): { revision: number; trustBundlePem: string } | undefined =>
  e?.state === 'issued' ? e.material : e?.state === 'available' ? e.cert : undefined;

/** The revision an entry stands for: its certificate's, or the one that did not load. */
const revisionOf = (e: Entry | undefined): number | undefined => (e?.state === 'missing' ? e.revision : held(e)?.revision);

export class Identities implements IdentityView {
  #entries = new Map<string, Entry>();
  /** Each trust bundle in use, parsed. */
  #roots = new Map<string, X509Certificate[]>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** How many contexts are built (the identities connections have used since their last revision). */
  get loaded(): number {
    let n = 0;
    for (const e of this.#entries.values()) if (e.state === 'available') n++;
    return n;
  }

  /**
   * Takes a snapshot's identities; an identity keeps what it built while its revision holds.
   * Returns whether any trust bundle changed (tunnel sessions resting on a removed root are then
   * re-checked).
   */
  update(materials: readonly IdentityMaterial[]): { bundleChanged: boolean } {
    const next = new Map<string, Entry>();
    let bundleChanged = false;
    for (const m of materials) {
      if (m.state === 'missing') {
        next.set(m.spiffeId, { state: 'missing', reason: m.reason });
        continue;
      }
      const before = this.#entries.get(m.spiffeId);
      const old = held(before);
      if (old && old.trustBundlePem !== m.trustBundlePem) bundleChanged = true;
      next.set(m.spiffeId, before && revisionOf(before) === m.revision ? before : { state: 'issued', material: m });
    }
    this.#entries = next;
    const bundles = new Set([...next.values()].flatMap((e) => held(e)?.trustBundlePem ?? []));
    for (const pem of this.#roots.keys()) if (!bundles.has(pem)) this.#roots.delete(pem);
    return { bundleChanged };
  }

  assertAvailable(spiffeId: string): ServingCert {
    const entry = this.#entries.get(spiffeId);
    if (!entry) throw new NoCertificateError(spiffeId, 'identity is not managed on this node');
    if (entry.state === 'missing') throw new NoCertificateError(spiffeId, entry.reason);
    const notAfter = entry.state === 'issued' ? entry.material.notAfter : entry.cert.notAfter;
    if (this.#now() >= notAfter) throw new NoCertificateError(spiffeId, `certificate expired at ${new Date(notAfter).toISOString()}`);
    return entry.state === 'available' ? entry.cert : this.#load(entry.material);
  }

  secureContextFor(spiffeId: string): SecureContext {
    return this.assertAvailable(spiffeId).context;
  }

  /** The roots `spiffeId`'s peers must chain to, or undefined without a usable certificate. */
  rootsOf(spiffeId: string): X509Certificate[] | undefined {
    try { return this.assertAvailable(spiffeId).roots; } catch { return undefined; }
  }

  /**
   * Builds what `m` needs to be presented. The control plane checked the material before it
   * published it; should it still not load, the identity is refused like a missing one until its
   * next revision, never served without TLS.
   */
  #load({ state: _state, ...m }: Material): ServingCert {
    try {
      let roots = this.#roots.get(m.trustBundlePem);
      if (!roots) this.#roots.set(m.trustBundlePem, roots = parseBundle(m.trustBundlePem));
      const cert = { ...m, roots, context: createSecureContext({ key: m.privateKeyPem, cert: m.certChainPem, ca: m.trustBundlePem, minVersion: 'TLSv1.3' }) };
      this.#entries.set(m.spiffeId, { state: 'available', cert });
      return cert;
    } catch (err) {
      const reason = `certificate unusable: ${(err as Error).message}`;
      this.#entries.set(m.spiffeId, { state: 'missing', reason, revision: m.revision });
      throw new NoCertificateError(m.spiffeId, reason);
    }
  }
}
