// What the agent costs each workload it serves: its own CPU seconds and memory, apportioned to the
// local workloads by what each caused, so that summed over the node they are the agent's totals.
//
// CPU: at each accounting (a scrape), the process's CPU seconds since the last one are split. Each
// local workload's traffic since then (connections opened, the tunnel handshakes they caused, bytes
// relayed, wake-ups: data after a pause, which is what a keep-alive request costs, while a bulk
// transfer's reads come back to back) is priced per unit, as `npm run bench:overhead` measured each
// alone. When the priced traffic is more than the CPU used, every workload gets its priced share of
// what was used; when less, each gets its priced traffic and the rest (the control plane, timers,
// GC of an idle heap: what serving a pod costs with no traffic) is split evenly over the local
// pods. A node with no local pod charges it to `unattributed`.
//
// Memory: the agent's RSS now, its idle part (RSS when it first accounted, as a floor) split evenly
// over the local pods, the rest by open connections (each holds buffers and windows).

import { type WorkloadUnits, workloadKey } from './tcp-series.ts';

export type { WorkloadUnits } from './tcp-series.ts';

/**
 * Per-unit CPU seconds on one agent (bench/README.md, "What the mesh costs each workload": a
 * workload sending alone; a connection from "The table again", a handshake from "What identity
 * costs", each halved for one agent).
 */
export const CPU_SECONDS_PER = { connection: 0.45e-3, handshake: 0.8e-3, byte: 0.95e-9, wakeup: 0.11e-3 } as const;

export const UNATTRIBUTED = { workload: 'unattributed', namespace: 'unattributed' } as const;

export interface OverheadOptions {
  /** The process's CPU seconds so far (every thread). */
  cpuSeconds(): number;
  rssBytes(): number;
  /** The workload of each local pod now, by key (`namespace/workload`): a base cost is spread per pod. */
  localWorkloads(): readonly string[];
  prices?: { connection: number; handshake: number; byte: number; wakeup: number };
}

export class OverheadAccountant {
  readonly #o: OverheadOptions;
  readonly #prices: { connection: number; handshake: number; byte: number; wakeup: number };
  #lastCpu: number;
  #idleRss: number | undefined;
  /** CPU seconds charged so far, by workload key. */
  readonly cpu = new Map<string, number>();

  constructor(o: OverheadOptions) {
    this.#o = o;
    this.#prices = o.prices ?? CPU_SECONDS_PER;
    this.#lastCpu = o.cpuSeconds();
  }

  /** Splits the CPU used since the last call by `units` (what each workload caused since then). */
  account(units: ReadonlyMap<string, WorkloadUnits>): void {
    const now = this.#o.cpuSeconds();
    const used = Math.max(0, now - this.#lastCpu);
    this.#lastCpu = now;
    const p = this.#prices;
    const priced = new Map<string, number>();
    let total = 0;
    for (const [key, u] of units) {
      const cost = u.opened * p.connection + u.handshakes * p.handshake + u.bytes * p.byte + u.wakeups * p.wakeup;
      if (cost <= 0) continue;
      priced.set(key, cost);
      total += cost;
    }
    const charge = (key: string, s: number) => { if (s > 0) this.cpu.set(key, (this.cpu.get(key) ?? 0) + s); };
    if (total >= used) {
      for (const [key, cost] of priced) charge(key, (used * cost) / total);
      return;
    }
    for (const [key, cost] of priced) charge(key, cost);
    const base = spreadOver(this.#o.localWorkloads());
    for (const key of base) charge(key, (used - total) / base.length);
  }

  /** The agent's RSS split: its idle part evenly, the rest by open connections. */
  memory(open: ReadonlyMap<string, number>): Map<string, number> {
    const rss = this.#o.rssBytes();
    this.#idleRss ??= rss;
    const idle = Math.min(rss, this.#idleRss);
    const out = new Map<string, number>();
    const add = (key: string, b: number) => out.set(key, (out.get(key) ?? 0) + b);
    const base = spreadOver(this.#o.localWorkloads());
    for (const key of base) add(key, idle / base.length);
    const holding = [...open].filter(([, n]) => n > 0);
    const connections = holding.reduce((s, [, n]) => s + n, 0);
    if (connections === 0) for (const key of base) add(key, (rss - idle) / base.length);
    else for (const [key, n] of holding) add(key, ((rss - idle) * n) / connections);
    return out;
  }
}

/** The keys a base cost is spread over, one per local pod, or `unattributed` when there are none. */
function spreadOver(local: readonly string[]): readonly string[] {
  return local.length > 0 ? local : [workloadKey(UNATTRIBUTED.namespace, UNATTRIBUTED.workload)];
}
