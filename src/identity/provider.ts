// Where workload certificates come from. Local mode signs with a root on disk; the cluster mode
// (the CA service, issue 3) implements the same interface over HTTPS.
import type { RootCa } from './ca.ts';
import { signWorkloadCsr } from './ca.ts';

export interface IssuedCertificate {
  /** Leaf first, then any intermediates. */
  certChainPem: string;
  /** Roots the workload should trust (may hold two during root rotation). */
  trustBundlePem: string;
}

export interface CertificateProvider {
  readonly name: string;
  issue(csrPem: string, spiffeId: string): Promise<IssuedCertificate>;
}

/** Signs with a root held in this process. The trust domain is read per request: it comes from the registry. */
export function createLocalCaProvider(root: RootCa, opts: { trustDomain: () => string; ttlMs: number }): CertificateProvider {
  return {
    name: 'local-ca',
    async issue(csrPem, spiffeId) {
      const { certPem, spiffeId: signed } = signWorkloadCsr(root, csrPem, { trustDomain: opts.trustDomain(), ttlMs: opts.ttlMs });
      if (signed !== spiffeId) throw new Error(`CSR asks for ${signed}, not ${spiffeId}`);
      return { certChainPem: certPem, trustBundlePem: root.certPem };
    },
  };
}
