// How many data-plane workers the agent runs unless told (--workers), chosen as ztunnel chooses its
// worker threads: from the container's CPU limit when it has one (cgroup v2 cpu.max, or v1's quota
// and period), else a quarter of the node's cores, at least 1 and at most 16. The control plane's
// own thread is not counted: it idles between snapshots and scrapes.
import { readFileSync } from 'node:fs';
import os from 'node:os';

export const MAX_DEFAULT_WORKERS = 16;

/** Cores the cgroup may use, or undefined when unlimited (or unreadable). */
export function cgroupCpuLimit(read: (path: string) => string = (p) => readFileSync(p, 'utf8')): number | undefined {
  const tryRead = (p: string) => { try { return read(p).trim(); } catch { return undefined; } };
  const v2 = tryRead('/sys/fs/cgroup/cpu.max');
  if (v2) {
    const [quota, period] = v2.split(/\s+/);
    return quota === 'max' || !quota || !period ? undefined : Number(quota) / Number(period);
  }
  const quota = Number(tryRead('/sys/fs/cgroup/cpu/cpu.cfs_quota_us'));
  const period = Number(tryRead('/sys/fs/cgroup/cpu/cpu.cfs_period_us'));
  return quota > 0 && period > 0 ? quota / period : undefined;
}

export function defaultWorkers(limit = cgroupCpuLimit(), cores = os.availableParallelism()): number {
  const n = limit !== undefined ? Math.floor(limit) : Math.floor(cores / 4);
  return Math.min(MAX_DEFAULT_WORKERS, Math.max(1, n));
}
