// How the control plane holds its data plane: in its own thread (one worker, the default on a
// small node), or as N worker threads sharing the data ports (workers.ts). Either way it sees the
// same operations and plain data back.
import type { LevelWithSilent } from 'pino';
import type { Collection } from '../collect-garbage.ts';
import type { DataPlane } from './data-plane.ts';
import { sharedRedirectMemory } from './redirects.ts';
import { sharedSlotMemory } from './shared-slots.ts';
import { reclaim } from './shared-cells.ts';
import type { DataPlaneSettings, DataPlaneSnapshot, SharedCounters } from './snapshot.ts';
import type { DataPlaneDump, DataPlaneGauges } from './view.ts';

export interface DataPlaneHost {
  /** How many data planes serve (1: this thread). */
  readonly workers: number;
  apply(snapshot: DataPlaneSnapshot): void;
  listen(): Promise<void>;
  /** The gauges, after every count made so far reached the metrics. */
  gauges(): Promise<DataPlaneGauges>;
  dump(): Promise<DataPlaneDump>;
  /** Drains until `drainUntil()` (read again as it waits), then ends. */
  close(drainUntil: () => number): Promise<void>;
  /** A runtime log-level change reaching the data planes' loggers (this thread's share the family). */
  setLogLevel(level: LevelWithSilent): void;
  /** A collection in each worker thread's isolate (memory-target.ts; this thread's is the caller's). */
  collectGarbage(type: Collection): void;
}

/** One data plane among several (workers.ts): told its share again as the number serving changes. */
export interface ServingDataPlane extends DataPlaneHost {
  reshare(shares: WorkerShares): void;
}

/** What is split among the data planes serving: each one's share. */
export interface WorkerShares {
  handshakeRate: number;
  tunnelQueueBudgetBytes: number;
}

/** The data plane in the control plane's thread. */
export function inThisThread(data: DataPlane): ServingDataPlane {
  return {
    workers: 1,
    apply: (s) => data.apply(s),
    listen: () => data.listen(),
    gauges: async () => data.gauges(),
    dump: async () => data.dump(),
    close: (drainUntil) => data.close(drainUntil),
    setLogLevel: () => undefined,
    collectGarbage: () => undefined,
    reshare: (shares) => data.reshare(shares),
  };
}

/**
 * What each of N workers is given. Connection and pending-handshake slots are counted in memory
 * they share (shared-slots.ts): the limits hold for the node; so are the open redirected
 * connections (redirects.ts), which any worker's delivery must avoid; each worker thread also
 * mirrors its part (workers.ts gives it back if the thread dies). What is about each worker's own
 * event loop or queues is split: a source's handshake rate (the kernel spreads its connections over
 * the workers by 4-tuple) and the tunnel send-queue budget, 1/N each, at least 1.
 */
export function workerSettings(s: DataPlaneSettings, workers: number): DataPlaneSettings {
  return withShares({ ...s, sharedSlots: sharedCounters() }, workerShares(s, workers));
}

/** Each of `serving` data planes' share of the node's `s`. */
export function workerShares(s: DataPlaneSettings, serving: number): WorkerShares {
  const share = (n: number) => Math.max(1, Math.floor(n / serving));
  return { handshakeRate: share(s.limits.handshakeRate), tunnelQueueBudgetBytes: share(s.tunnelQueueBudgetBytes) };
}

/** `s` with `shares` in place of the node's figures. */
export function withShares(s: DataPlaneSettings, shares: WorkerShares): DataPlaneSettings {
  return { ...s, limits: { ...s.limits, handshakeRate: shares.handshakeRate }, tunnelQueueBudgetBytes: shares.tunnelQueueBudgetBytes };
}

/** Memory for the counters workers share, or for one worker's mirror of its part (shared-cells.ts). */
export function sharedCounters(): SharedCounters {
  return { connections: sharedSlotMemory(), pendingHandshakes: sharedSlotMemory(), redirects: sharedRedirectMemory() };
}

/** Gives back into `shared` what the worker whose mirror is `own` held when it exited. */
export function reclaimCounters(shared: SharedCounters, own: SharedCounters): void {
  for (const k of ['connections', 'pendingHandshakes', 'redirects'] as const) reclaim(shared[k], own[k]);
}
