// PEM trust bundles, parsed with Node's crypto alone: the data plane reads the bundles its
// snapshots carry through this, without the CA's X.509 library (node-forge).
import { X509Certificate } from 'node:crypto';
import { CaError } from '../errors.ts';

export const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** How many certificates a PEM bundle holds (for logs and /config_dump; parses nothing). */
export function bundleSize(pem: string): number {
  return pem.match(PEM_CERTIFICATE)?.length ?? 0;
}

/** Splits a PEM bundle into certificates (throws CaError on anything unparsable). */
export function parseBundle(pem: string): X509Certificate[] {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new CaError('trust bundle holds no certificate');
  return blocks.map((b) => {
    try {
      return new X509Certificate(b);
    } catch (err) {
      throw new CaError(`trust bundle holds an unparsable certificate: ${(err as Error).message}`);
    }
  });
}
