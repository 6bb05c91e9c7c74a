// The identities a data plane presents, built from the material its snapshots carry: one TLS secure
// context per certificate revision (re-parsing PEM per connection would cost a large share of
// handshake throughput: bench/README.md), and fail-closed when a certificate is missing or expired.
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

type Entry = { state: 'available'; cert: ServingCert } | { state: 'missing'; reason: string };

export class Identities implements IdentityView {
  #entries = new Map<string, Entry>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /**
   * Takes a snapshot's identities; contexts are rebuilt only for new revisions. Returns whether any
   * trust bundle changed (tunnel sessions resting on a removed root are then re-checked).
   */
  update(materials: readonly IdentityMaterial[]): { bundleChanged: boolean } {
    const next = new Map<string, Entry>();
    let bundleChanged = false;
    for (const m of materials) {
      const before = this.#entries.get(m.spiffeId);
      const old = before?.state === 'available' ? before.cert : undefined;
      if (m.state === 'missing') {
        next.set(m.spiffeId, { state: 'missing', reason: m.reason });
        continue;
      }
      if (old && old.trustBundlePem !== m.trustBundlePem) bundleChanged = true;
      if (old?.revision === m.revision) {
        next.set(m.spiffeId, { state: 'available', cert: old });
        continue;
      }
      // The control plane checked the material before publishing it; should it still not load, the
      // identity is refused like a missing one, never served without TLS.
      try {
        next.set(m.spiffeId, { state: 'available', cert: serving(m) });
      } catch (err) {
        next.set(m.spiffeId, { state: 'missing', reason: `certificate unusable: ${(err as Error).message}` });
      }
    }
    this.#entries = next;
    return { bundleChanged };
  }

  assertAvailable(spiffeId: string): ServingCert {
    const entry = this.#entries.get(spiffeId);
    if (!entry) throw new NoCertificateError(spiffeId, 'identity is not managed on this node');
    if (entry.state === 'missing') throw new NoCertificateError(spiffeId, entry.reason);
    if (this.#now() >= entry.cert.notAfter) throw new NoCertificateError(spiffeId, `certificate expired at ${new Date(entry.cert.notAfter).toISOString()}`);
    return entry.cert;
  }

  secureContextFor(spiffeId: string): SecureContext {
    return this.assertAvailable(spiffeId).context;
  }

  /** The roots `spiffeId`'s peers must chain to, or undefined without a usable certificate. */
  rootsOf(spiffeId: string): X509Certificate[] | undefined {
    try { return this.assertAvailable(spiffeId).roots; } catch { return undefined; }
  }
}

function serving({ state: _state, ...m }: Material): ServingCert {
  return {
    ...m,
    roots: parseBundle(m.trustBundlePem),
    context: createSecureContext({ key: m.privateKeyPem, cert: m.certChainPem, ca: m.trustBundlePem, minVersion: 'TLSv1.3' }),
  };
}
