import { formatSpiffeId } from '../identity/spiffe.ts';

export interface Workload {
  name: string;
  namespace: string;
  serviceAccount: string;
  ip: string;
  node: string;
  /** Whether this pod's traffic is redirected through the agent on its node. */
  captured: boolean;
  /** SPIFFE ID derived from trust domain, namespace and service account. */
  spiffeId: string;
  /** The pod's labels: what MeshPolicy selectors match. */
  labels: Readonly<Record<string, string>>;
  /**
   * The workload the pod belongs to (its Deployment, StatefulSet, DaemonSet or Job; the pod's own
   * name when it has no owner). Metrics are labelled with it: one series per workload, not per pod.
   */
  workload: string;
}

/** Whether plaintext may reach a namespace's captured pods (annotation `meshlet.dev/mtls`). */
export type MtlsMode = 'strict' | 'permissive';

export interface MeshNode {
  name: string;
  ip: string;
}

/**
 * A MeshPolicy as the source delivered it (the CRD's fields, already checked against its schema by
 * the apiserver). The policy engine compiles these; the registry only carries them.
 */
export interface MeshPolicyObject {
  namespace: string;
  name: string;
  spec: Record<string, unknown>;
}

/** One consistent view of the mesh, replaced whole on every change (never mutated in place). */
export interface MeshSnapshot {
  trustDomain: string;
  nodes: readonly MeshNode[];
  workloads: readonly Workload[];
  policies: readonly MeshPolicyObject[];
  /** Namespaces with an mTLS mode set; the others are permissive. */
  mtls: Readonly<Record<string, MtlsMode>>;
}

export function workloadSpiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  return formatSpiffeId({ trustDomain, namespace, serviceAccount });
}
