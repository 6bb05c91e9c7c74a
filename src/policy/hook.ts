// The policy hook every connection decision passes through. This issue ships the mesh default (no
// policy = allow, mTLS permissive); the MeshPolicy engine (issue 5) implements the same interface.
import type { Workload } from '../workloads/model.ts';

export interface ConnectionAttributes {
  /** Verified SPIFFE ID of the peer; absent for plaintext sources. */
  sourcePrincipal?: string;
  sourceIp: string;
  sourceNamespace?: string;
  destination: Workload;
  destinationPort: number;
}

export type PolicyDecision =
  | { allowed: true; policy?: string }
  | { allowed: false; policy: string; reason: string };

export type MtlsMode = 'strict' | 'permissive';

export interface PolicyEngine {
  authorize(conn: ConnectionAttributes): PolicyDecision;
  mtlsMode(destination: Workload): MtlsMode;
  /** Whether a captured source may reach a destination outside the mesh (plain TCP). */
  allowPassthrough(source: Workload, ip: string, port: number): PolicyDecision;
}

export const allowAllPolicy: PolicyEngine = {
  authorize: () => ({ allowed: true }),
  mtlsMode: () => 'permissive',
  allowPassthrough: () => ({ allowed: true }),
};
