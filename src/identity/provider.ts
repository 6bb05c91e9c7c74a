// Where workload certificates come from. Local mode signs with a root held in this process; cluster
// mode asks the CA service over HTTPS (ca-client.ts). Both implement this interface.
import { CaSigner, parseWorkloadCsr } from './ca.ts';
import type { RootSet } from './roots.ts';

export interface IssuedCertificate {
  /** Leaf first, then any intermediates. */
  certChainPem: string;
  /** Roots the workload should trust (two during a root rotation). */
  trustBundlePem: string;
}

/** The roots to trust and the one that signs new certificates now. */
export interface TrustBundle {
  pem: string;
  signingFingerprint: string;
}

export interface CertificateProvider {
  readonly name: string;
  issue(csrPem: string, spiffeId: string): Promise<IssuedCertificate>;
  /**
   * Subscribes to trust-bundle changes (root rotation), if the provider can see them. The listener
   * gets the current bundle whenever it changes; the returned function unsubscribes.
   */
  watchBundle?(listener: (bundle: TrustBundle) => void): () => void;
}

/** Signs with a root held in this process. The trust domain is read per request: it comes from the registry. */
export function createLocalCaProvider(roots: RootSet, opts: { trustDomain: () => string; ttlMs: number }): CertificateProvider {
  const signer = new CaSigner(roots.signing);
  return {
    name: 'local-ca',
    async issue(csrPem, spiffeId) {
      const parsed = parseWorkloadCsr(csrPem, opts.trustDomain());
      if (parsed.spiffeId !== spiffeId) throw new Error(`CSR asks for ${parsed.spiffeId}, not ${spiffeId}`);
      return { certChainPem: signer.signWorkload(parsed, { ttlMs: opts.ttlMs }), trustBundlePem: roots.trustBundlePem };
    },
  };
}
