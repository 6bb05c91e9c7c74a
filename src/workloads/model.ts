import { formatSpiffeId } from '../identity/spiffe.ts';

export interface Workload {
  name: string;
  namespace: string;
  serviceAccount: string;
  /** The pod's IPv4 address: the one the mesh carries, and the workload's identity by source address. */
  ip: string;
  /**
   * The pod's IPv6 address on a dual-stack cluster. The mesh does not carry IPv6: for a captured
   * pod, the node refuses new TCP connections to it (the IPv6 guard), so nothing reaches the pod
   * around the mesh.
   */
  ipv6?: string;
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
  /**
   * Released from the mesh a moment ago (release-grace.ts): its own agent still takes the tunnels
   * other agents opened before they saw the release, and lets plaintext through, until the grace
   * ends. No agent sends it new mesh connections.
   */
  leaving?: boolean;
}

/** Whether plaintext may reach a namespace's captured pods (annotation `meshlet.dev/mtls`). */
export type MtlsMode = 'strict' | 'permissive';

export interface MeshNode {
  name: string;
  ip: string;
}

/**
 * A MeshPolicy as the source delivered it. The policy engine compiles these; the registry only
 * carries them.
 */
export interface MeshPolicyObject {
  namespace: string;
  name: string;
  spec: Record<string, unknown>;
  /** How the spec departs from the MeshPolicy schema (policy/schema.ts): the policy fails closed. */
  problems?: string[];
}

/** A port a Service exposes on its cluster IP (TCP). `name` is '' for a Service's single unnamed port. */
export interface ServicePort {
  name: string;
  port: number;
}

/** One backend of a Service, with the port it serves each Service port on (targetPort resolved). */
export interface ServiceEndpoint {
  ip: string;
  /** The node it runs on, when known: PreferClose prefers this agent's node. */
  node?: string;
  ready: boolean;
  /** Target port per Service port name; a Service port the endpoint does not serve is absent. */
  ports: Readonly<Record<string, number>>;
}

/**
 * A Service the agent resolves itself: a connection to clusterIP:port goes to one of the endpoints
 * (balanced, retried before any byte), then on the same path as a connection to that pod.
 */
export interface MeshService {
  name: string;
  namespace: string;
  /** Undefined for headless Services: clients address the pods directly, as they would anyway. */
  clusterIP?: string;
  ports: readonly ServicePort[];
  endpoints: readonly ServiceEndpoint[];
  /** `trafficDistribution: PreferClose`: endpoints on this node first when there are any. */
  preferClose: boolean;
}

/**
 * An address the source did not give to a pod that claimed it (Kubernetes source). Identity is the
 * address, so a claim the source cannot trust is refused, logged and counted, never resolved silently.
 */
export interface AddressRefusal {
  /** `namespace/name` of the pod refused. */
  pod: string;
  node: string;
  ip: string;
  /**
   * mirror_pod: a kubelet's static pod; no_service_account: no identity to give; outside_pod_cidrs:
   * not in its node's podCIDRs; address_held_elsewhere: a live pod on another node holds it.
   */
  reason: 'mirror_pod' | 'no_service_account' | 'outside_pod_cidrs' | 'address_held_elsewhere';
  /** address_held_elsewhere: the pod that keeps the address. */
  holder?: string;
}

/** One consistent view of the mesh, replaced whole on every change (never mutated in place). */
export interface MeshSnapshot {
  trustDomain: string;
  nodes: readonly MeshNode[];
  workloads: readonly Workload[];
  policies: readonly MeshPolicyObject[];
  /** Namespaces with an mTLS mode set; the others are permissive. */
  mtls: Readonly<Record<string, MtlsMode>>;
  services: readonly MeshService[];
  /** Addresses refused to the pods that claimed them (absent: none). */
  refused?: readonly AddressRefusal[];
  /**
   * The cluster's pod ranges (IPv4 CIDRs, canonical), set only when other nodes' pods come from
   * the address slices: an address there that the table lacks is a pod it has not heard of yet
   * (outbound.ts, the controller-away rule). Absent: the table is the whole cluster's.
   */
  podRanges?: readonly string[];
}

export function workloadSpiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  return formatSpiffeId({ trustDomain, namespace, serviceAccount });
}
