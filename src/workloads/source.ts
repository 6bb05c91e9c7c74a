import type { MeshSnapshot } from './model.ts';

/**
 * Where the registry's content comes from: a YAML file (local mode, demo, tests) or the Kubernetes
 * API (informers). A source calls `onSnapshot` with a complete, valid view every time it changes,
 * and `onError` for input it rejected; after an error the last good snapshot stays in force.
 */
export interface WorkloadSource {
  start(handlers: { onSnapshot(s: MeshSnapshot): void; onError(err: Error): void }): Promise<void>;
  close(): Promise<void>;
  /** What the source knows about its own health (the config dump shows it). */
  status?(): object;
  /** With address slices: whether their writer keeps them (addresses/lease.ts), for the metric. */
  addressController?(): { stale: boolean; unseenMs?: number } | undefined;
  /** The agent on `node` became ready (the Kubernetes source lifts the node's taint gate, taint-gate.ts). */
  nodeReady?(node: string): void;
}
