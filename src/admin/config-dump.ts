// GET /config_dump: the agent's state as one JSON document, for `meshlet status`, operators and the
// end-to-end tests. Built from the parts the agent hands over, read at request time.
import type { CertificateManager } from '../identity/certs.ts';
import { bundleSize } from '../identity/pem.ts';
import type { DataPlaneDump } from '../proxy/view.ts';
import type { WorkloadRegistry } from '../workloads/registry.ts';
import type { Readiness } from './server.ts';
import type { MemoryPressure } from '../memory-target.ts';

/** What the dump reads: the agent's parts, each asked at request time. */
export interface ConfigDumpParts {
  node: string;
  /** 'node', or the workload a sidecar serves. */
  mode: 'node' | { sidecar: string };
  /** Where the agent is in its life (agent.ts AgentState). */
  phase: string;
  readiness: Readiness;
  registry: WorkloadRegistry;
  workloadSource: Record<string, unknown>;
  identityProvider: string;
  probeGate: unknown;
  heap: { headroomMiB: number; youngCollectionMiB: number; growingPercent: number | undefined; target: MemoryPressure | undefined };
  /** Data planes serving (worker threads, or 1: the agent's thread), and the most that may (--workers). */
  workers: number;
  maxWorkers: number;
  certs: CertificateManager;
  /** The data planes' state, merged (proxy/view.ts). */
  data: DataPlaneDump;
}

export function configDump(p: ConfigDumpParts): unknown {
  const snapshot = p.registry.snapshot;
  const bundle = p.certs.trustBundle;
  return {
    node: p.node,
    mode: p.mode,
    phase: p.phase,
    ready: p.readiness.ready,
    pending: p.readiness.pending(),
    trustDomain: snapshot?.trustDomain,
    workloadSource: p.workloadSource,
    workers: p.workers,
    maxWorkers: p.maxWorkers,
    policy: p.data.policy,
    identityProvider: p.identityProvider,
    probeGate: p.probeGate,
    heap: p.heap,
    trustBundle: bundle ? { signingRoot: bundle.signingFingerprint, roots: bundleSize(bundle.pem) } : undefined,
    workloads: (snapshot?.workloads ?? []).map((w) => ({ ...w, local: p.registry.isLocal(w) })),
    refusedAddresses: snapshot?.refused ?? [],
    services: (snapshot?.services ?? []).map((s) => ({
      name: s.name, namespace: s.namespace, clusterIP: s.clusterIP ?? 'None', ports: s.ports, preferClose: s.preferClose,
      endpoints: p.data.endpoints[`${s.namespace}/${s.name}`] ?? [],
    })),
    certificates: p.certs.states().map((c) => c.state === 'available'
      ? { spiffeId: c.spiffeId, state: c.state, serial: c.serial, signedBy: c.signedBy, notBefore: new Date(c.notBefore).toISOString(), notAfter: new Date(c.notAfter).toISOString() }
      : c),
    pools: p.data.pools,
    connections: p.data.connections,
  };
}
