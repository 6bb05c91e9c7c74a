// The policy hook every connection decision passes through: the MeshPolicy engine (engine.ts)
// implements it; `allowAllPolicy` is the mesh without policies (tests and benchmarks use it).
import type { MeshSnapshot, MtlsMode, Workload } from '../workloads/model.ts';

export type { MtlsMode } from '../workloads/model.ts';

export interface ConnectionAttributes {
  /** Verified SPIFFE ID of the peer; absent for plaintext sources. */
  sourcePrincipal?: string;
  sourceIp: string;
  sourceNamespace?: string;
  destination: Workload;
  destinationPort: number;
}

/**
 * `policy` names the policy that decided (namespace/name); `audit` the AUDIT policies that matched;
 * `auditUnmatched` the AUDIT policies that select the destination and did not match: what each would
 * have denied as an ALLOW (`meshlet policy suggest --audit` proposes them to be watched so).
 */
export type PolicyDecision =
  | { allowed: true; policy?: string; audit?: string[]; auditUnmatched?: string[] }
  | { allowed: false; policy: string; reason: string; audit?: string[]; auditUnmatched?: string[] };

export interface PolicyEngine {
  authorize(conn: ConnectionAttributes): PolicyDecision;
  mtlsMode(destination: Workload): MtlsMode;
  /** Whether a captured source may reach a destination outside the mesh (plain TCP). */
  allowPassthrough(source: Workload, ip: string, port: number): PolicyDecision;
  /** Takes the policies and mTLS modes of a new registry snapshot. */
  update?(snapshot: MeshSnapshot): void;
  /** What the engine enforces, for /config_dump. */
  dump?(): object;
}

export const allowAllPolicy: PolicyEngine = {
  authorize: () => ({ allowed: true }),
  mtlsMode: () => 'permissive',
  allowPassthrough: () => ({ allowed: true }),
};
