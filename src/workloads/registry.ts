// ip -> workload. The data path reads it on every connection, so lookups are one Map access and a
// new snapshot replaces the indexes in one assignment.
import { EventEmitter } from 'node:events';
import { plainIp } from '../capture/socket.ts';
import type { MeshService, MeshSnapshot, ServicePort, Workload } from './model.ts';

interface Indexes {
  snapshot: MeshSnapshot;
  byIp: Map<string, Workload>;
  /** `clusterIP:port` -> the Service and which of its ports. */
  byServiceAddress: Map<string, { service: MeshService; port: ServicePort }>;
}

export class WorkloadRegistry extends EventEmitter<{ change: [MeshSnapshot] }> {
  #idx: Indexes | undefined;

  /** The node this agent runs on (PreferClose keeps to its endpoints). */
  readonly nodeName: string;
  /** Sidecar mode: the one workload this agent serves (its pod); otherwise every workload of the node. */
  readonly #sidecar: { namespace: string; name: string } | undefined;

  constructor(nodeName: string, sidecar?: { namespace: string; name: string }) {
    super();
    this.nodeName = nodeName;
    this.#sidecar = sidecar;
  }

  /** Whether a first complete snapshot has arrived (readiness waits on it). */
  get synced(): boolean {
    return this.#idx !== undefined;
  }

  get snapshot(): MeshSnapshot | undefined {
    return this.#idx?.snapshot;
  }

  get trustDomain(): string {
    return this.#idx?.snapshot.trustDomain ?? '';
  }

  replace(snapshot: MeshSnapshot): void {
    const byIp = new Map<string, Workload>();
    for (const w of snapshot.workloads) byIp.set(w.ip, w);
    const byServiceAddress = new Map<string, { service: MeshService; port: ServicePort }>();
    for (const service of snapshot.services) {
      if (!service.clusterIP) continue;
      for (const port of service.ports) byServiceAddress.set(`${service.clusterIP}:${port.port}`, { service, port });
    }
    this.#idx = { snapshot, byIp, byServiceAddress };
    this.emit('change', snapshot);
  }

  findWorkload(ip: string | undefined): Workload | undefined {
    return this.#idx?.byIp.get(plainIp(ip));
  }

  /** The Service whose cluster IP and port these are, if any. */
  findService(ip: string, port: number): { service: MeshService; port: ServicePort } | undefined {
    return this.#idx?.byServiceAddress.get(`${plainIp(ip)}:${port}`);
  }

  /** Captured workloads this agent serves (its node's, or its one pod's): the ones it holds identities for. */
  localCaptured(): Workload[] {
    return (this.#idx?.snapshot.workloads ?? []).filter((w) => w.captured && this.isLocal(w));
  }

  isLocal(w: Workload): boolean {
    const one = this.#sidecar;
    return one ? w.namespace === one.namespace && w.name === one.name : w.node === this.nodeName;
  }
}
