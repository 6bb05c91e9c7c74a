// Releasing a pod from the mesh without refusing a connection. Every agent reads the release (a
// namespace un-annotated, a pod opted out) at a slightly different moment. Were the pod's own agent
// first, another agent that has not seen it yet would still send a tunnel to the pod's port 15008,
// no longer redirected, and the connection would be refused. So the pod's own agent lets go last:
// for a grace period it keeps the pod captured (its tunnels, certificate, capture), marked leaving:
// no agent sends it new mesh connections, and plaintext reaches it as without the mesh.
import type { MeshSnapshot, Workload } from './model.ts';

/** Longer than any agent takes to see a change (a poll, a watch event), with a margin. */
export const RELEASE_GRACE_MS = 10_000;

export class ReleaseGrace {
  readonly #node: string;
  readonly #graceMs: number;
  readonly #now: () => number;
  /** Local pods released a moment ago, by address: as they were while captured, and until when. */
  readonly #leaving = new Map<string, { workload: Workload; until: number }>();
  #previous: MeshSnapshot | undefined;

  constructor(opts: { node: string; graceMs?: number; now?: () => number }) {
    this.#node = opts.node;
    this.#graceMs = opts.graceMs ?? RELEASE_GRACE_MS;
    this.#now = opts.now ?? Date.now;
  }

  /** The snapshot as this agent serves it: `next`, with its own pods released in the grace put back, leaving. */
  apply(next: MeshSnapshot): MeshSnapshot {
    const now = this.#now();
    const previous = this.#previous;
    this.#previous = next;
    // This node's pods only: a released pod and whatever holds its address now live here.
    const byIp = new Map(next.workloads.filter((w) => w.node === this.#node).map((w) => [w.ip, w]));
    for (const w of previous?.workloads ?? []) {
      if (w.node !== this.#node || !w.captured || w.leaving || this.#leaving.has(w.ip)) continue;
      // The same pod, still there, no longer captured (a deleted pod has nothing left to reach).
      const after = byIp.get(w.ip);
      if (after && !after.captured && after.name === w.name && after.namespace === w.namespace) {
        this.#leaving.set(w.ip, { workload: w, until: now + this.#graceMs });
      }
    }
    for (const [ip, l] of this.#leaving) {
      const after = byIp.get(ip);
      // Over, captured again, deleted, or the address now belongs to another pod: the grace ends.
      if (l.until <= now || !after || after.captured || after.name !== l.workload.name || after.namespace !== l.workload.namespace) this.#leaving.delete(ip);
    }
    if (this.#leaving.size === 0) return next;
    const leaving = [...this.#leaving.values()].map((l) => ({ ...l.workload, leaving: true }));
    return { ...next, workloads: [...next.workloads.filter((w) => !this.#leaving.has(w.ip)), ...leaving] };
  }

  /** When the next grace ends (the agent applies the snapshot again then), or undefined. */
  get nextEnd(): number | undefined {
    let min: number | undefined;
    for (const l of this.#leaving.values()) min = min === undefined ? l.until : Math.min(min, l.until);
    return min;
  }
}
