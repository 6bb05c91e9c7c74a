// ip -> workload. The data path reads it on every connection, so lookups are one Map access and a
// new snapshot replaces the indexes in one assignment.
import { EventEmitter } from 'node:events';
import { BlockList } from 'node:net';
import { plainIp } from '../capture/socket.ts';
import type { MeshService, MeshSnapshot, ServicePort, Workload } from './model.ts';

interface Indexes {
  snapshot: MeshSnapshot;
  byIp: Map<string, Workload>;
  /** `clusterIP:port` -> the Service (node mode: its endpoints in the mesh only) and which of its ports. */
  byServiceAddress: Map<string, { service: MeshService; port: ServicePort }>;
  /** Every captured pod's address and the cluster IPs the agent resolves: what capture redirects to it. */
  destinations: Set<string>;
  /** The snapshot's pod ranges, for lookups (undefined: none given). */
  podRanges: BlockList | undefined;
}

/**
 * How long a remote pod that left the mesh stays a tunnel destination here. Capture's destinations
 * set follows the registry a moment later, so a connection may still be redirected to the agent for
 * a pod the registry has just released; refused, it was a reset the release caused. Shorter than
 * RELEASE_GRACE_MS (release-grace.ts): the pod's own agent still takes the tunnel meanwhile.
 */
export const DEPARTED_MS = 5_000;

export class WorkloadRegistry extends EventEmitter<{ change: [MeshSnapshot] }> {
  #idx: Indexes | undefined;
  /** Pods released from the mesh a moment ago, as they were while captured, by address. */
  readonly #departed = new Map<string, { workload: Workload; until: number }>();
  /** The same for Services this agent no longer resolves (every endpoint released), by `clusterIP:port`. */
  readonly #departedServices = new Map<string, { entry: { service: MeshService; port: ServicePort }; until: number }>();
  readonly #now: () => number;

  /** The node this agent runs on (PreferClose keeps to its endpoints). */
  readonly nodeName: string;
  /** Sidecar mode: the one workload this agent serves (its pod); otherwise every workload of the node. */
  readonly #sidecar: { namespace: string; name: string } | undefined;

  constructor(nodeName: string, sidecar?: { namespace: string; name: string }, now: () => number = Date.now) {
    super();
    this.nodeName = nodeName;
    this.#sidecar = sidecar;
    this.#now = now;
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
    const destinations = new Set<string>();
    for (const w of snapshot.workloads) {
      byIp.set(w.ip, w);
      // A leaving pod gets no new mesh connections (other agents no longer count it either).
      if (w.captured && !w.leaving) destinations.add(w.ip);
    }
    const byServiceAddress = new Map<string, { service: MeshService; port: ServicePort }>();
    for (const service of snapshot.services) {
      if (!service.clusterIP) continue;
      // A node agent dials only inside the mesh (a connection it dialled elsewhere would leave as
      // the node), so it resolves a Service to its endpoints in the mesh, and one with none is left
      // to kube-proxy, as without meshlet. A sidecar dials from its pod: every endpoint will do.
      const routed = this.#sidecar ? service : meshEndpointsOnly(service, byIp);
      if (!routed) continue;
      destinations.add(service.clusterIP);
      for (const port of service.ports) byServiceAddress.set(`${service.clusterIP}:${port.port}`, { service: routed, port });
    }
    this.#noteDepartures(byIp, byServiceAddress);
    this.#idx = { snapshot, byIp, byServiceAddress, destinations, podRanges: snapshot.podRanges?.length ? ipv4Ranges(snapshot.podRanges) : undefined };
    this.emit('change', snapshot);
  }

  /**
   * The addresses a captured pod's connections are redirected to the agent for (capture's
   * destinations set): every captured pod of the mesh and the cluster IPs of the Services it resolves.
   */
  get destinations(): ReadonlySet<string> {
    return this.#idx?.destinations ?? new Set();
  }

  /** The pod ranges capture also redirects (address slices only; empty otherwise). */
  get podRanges(): ReadonlySet<string> {
    return new Set(this.#idx?.snapshot.podRanges ?? []);
  }

  /** Whether `ip` is in the cluster's pod ranges as the snapshot gives them (none given: false). */
  inPodRanges(ip: string): boolean {
    return this.#idx?.podRanges?.check(plainIp(ip), 'ipv4') ?? false;
  }

  findWorkload(ip: string | undefined): Workload | undefined {
    return this.#idx?.byIp.get(plainIp(ip));
  }

  /** The same pod, still there, no longer captured: released (a deleted pod has nothing left to reach). */
  #noteDepartures(next: ReadonlyMap<string, Workload>, nextServices: ReadonlyMap<string, { service: MeshService; port: ServicePort }>): void {
    const now = this.#now();
    for (const [ip, d] of this.#departed) if (d.until <= now || next.get(ip)?.captured) this.#departed.delete(ip);
    for (const w of this.#idx?.byIp.values() ?? []) {
      const after = next.get(w.ip);
      if (w.captured && after && !after.captured && after.name === w.name && after.namespace === w.namespace) {
        this.#departed.set(w.ip, { workload: w, until: now + DEPARTED_MS });
      }
    }
    // A Service goes with its last endpoint's release; its endpoints are in #departed just above.
    for (const [k, d] of this.#departedServices) if (d.until <= now || nextServices.has(k)) this.#departedServices.delete(k);
    for (const [k, entry] of this.#idx?.byServiceAddress ?? []) {
      if (!nextServices.has(k) && entry.service.endpoints.every((e) => this.#departed.has(e.ip))) {
        this.#departedServices.set(k, { entry, until: now + DEPARTED_MS });
      }
    }
  }

  /** A pod released from the mesh less than DEPARTED_MS ago, as it was while captured. */
  departed(ip: string): Workload | undefined {
    const d = this.#departed.get(plainIp(ip));
    return d && d.until > this.#now() ? d.workload : undefined;
  }

  /** The Service whose cluster IP and port these are, if any. */
  findService(ip: string, port: number): { service: MeshService; port: ServicePort } | undefined {
    const k = `${plainIp(ip)}:${port}`;
    const found = this.#idx?.byServiceAddress.get(k);
    if (found) return found;
    const d = this.#departedServices.get(k);
    return d && d.until > this.#now() ? d.entry : undefined;
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

/** IPv4 CIDRs as a BlockList for lookups (a malformed one left out; the sources check theirs). */
export function ipv4Ranges(cidrs: Iterable<string>): BlockList {
  const list = new BlockList();
  for (const cidr of cidrs) {
    const [net, bits] = cidr.split('/');
    if (net && bits !== undefined) list.addSubnet(net, Number(bits), 'ipv4');
  }
  return list;
}

/** The Service with only its endpoints that are captured pods; the same object when all are; undefined when none is. */
function meshEndpointsOnly(service: MeshService, byIp: ReadonlyMap<string, Workload>): MeshService | undefined {
  const meshed = service.endpoints.filter((e) => byIp.get(e.ip)?.captured === true);
  if (meshed.length === service.endpoints.length) return meshed.length > 0 ? service : undefined;
  return meshed.length > 0 ? { ...service, endpoints: meshed } : undefined;
}
