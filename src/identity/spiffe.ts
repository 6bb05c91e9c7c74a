// SPIFFE IDs as meshlet uses them: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
// Validation follows the SPIFFE ID specification (lower-case trust domain, no empty, '.' or '..'
// path segments, no query, fragment, port or user info).
import { SpiffeIdError } from '../errors.ts';

export interface WorkloadIdentity {
  trustDomain: string;
  namespace: string;
  serviceAccount: string;
}

const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;
const MAX_LENGTH = 2048;

export function assertTrustDomain(td: string): void {
  if (!td || !TRUST_DOMAIN.test(td) || td.length > 255) {
    throw new SpiffeIdError(td, 'trust domain must be non-empty and use only a-z, 0-9, ".", "-", "_"');
  }
}

export function formatSpiffeId(id: WorkloadIdentity): string {
  assertTrustDomain(id.trustDomain);
  for (const [what, seg] of [['namespace', id.namespace], ['service account', id.serviceAccount]] as const) {
    if (!SEGMENT.test(seg) || seg === '.' || seg === '..') {
      throw new SpiffeIdError(seg, `${what} is not a valid SPIFFE path segment`);
    }
  }
  return `spiffe://${id.trustDomain}/ns/${id.namespace}/sa/${id.serviceAccount}`;
}

/** Parses any valid SPIFFE ID into trust domain and path segments. */
export function parseSpiffeUri(input: string): { trustDomain: string; segments: string[] } {
  if (input.length > MAX_LENGTH) throw new SpiffeIdError(input.slice(0, 64), `longer than ${MAX_LENGTH} bytes`);
  if (!input.startsWith('spiffe://')) throw new SpiffeIdError(input, 'scheme must be spiffe://');
  const rest = input.slice('spiffe://'.length);
  if (/[?#]/.test(rest)) throw new SpiffeIdError(input, 'query and fragment are not allowed');
  const slash = rest.indexOf('/');
  const trustDomain = slash < 0 ? rest : rest.slice(0, slash);
  if (/[@:]/.test(trustDomain)) throw new SpiffeIdError(input, 'user info and port are not allowed');
  if (!TRUST_DOMAIN.test(trustDomain)) {
    throw new SpiffeIdError(input, 'trust domain must be non-empty and use only a-z, 0-9, ".", "-", "_"');
  }
  const segments = slash < 0 ? [] : rest.slice(slash + 1).split('/');
  for (const seg of segments) {
    if (seg === '') throw new SpiffeIdError(input, 'empty path segment (or trailing slash)');
    if (seg === '.' || seg === '..') throw new SpiffeIdError(input, 'path segments "." and ".." are not allowed');
    if (!SEGMENT.test(seg)) throw new SpiffeIdError(input, `path segment ${JSON.stringify(seg)} has characters outside A-Z a-z 0-9 . - _`);
  }
  return { trustDomain, segments };
}

/** Parses a workload SPIFFE ID of meshlet's ns/sa form. */
export function parseWorkloadId(input: string, expectedTrustDomain?: string): WorkloadIdentity {
  const { trustDomain, segments } = parseSpiffeUri(input);
  if (segments.length !== 4 || segments[0] !== 'ns' || segments[2] !== 'sa') {
    throw new SpiffeIdError(input, 'path must be /ns/<namespace>/sa/<service-account>');
  }
  if (expectedTrustDomain !== undefined && trustDomain !== expectedTrustDomain) {
    throw new SpiffeIdError(input, `trust domain ${trustDomain} is not ${expectedTrustDomain}`);
  }
  return { trustDomain, namespace: segments[1] as string, serviceAccount: segments[3] as string };
}
