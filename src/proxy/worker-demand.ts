// When to start another data plane, or retire one, for an agent that runs between --min-workers
// and --workers of them. Each extra worker thread costs about 20 MiB (bench/README.md, "Data-plane
// workers"), most nodes' traffic keeps one event loop mostly idle, and a busy one is what a second
// would relieve: so the sign is the event-loop utilization of the data planes serving (the share
// of the time each loop spent running rather than waiting), their mean over a sampling interval.
// Busy for `sustainMs` in a row starts one. Quiet enough that one fewer would still be under
// `idleBelow` (their summed utilization over one fewer), for `retireAfterMs` in a row, retires one:
// slowly, because a retired worker finishes its open connections before its memory is given back.
// After either, the next waits at least `settleMs`. Pure: the caller samples, starts and retires.

export interface DemandOptions {
  /** Mean utilization, 0-1, from which the data planes count as busy. */
  busyAbove: number;
  /** How long they must stay busy before another starts. */
  sustainMs: number;
  /** Utilization one fewer data plane would have to stay under for one to retire. */
  idleBelow: number;
  /** How long they must stay that quiet before one retires. */
  retireAfterMs: number;
  /** How long after a start or a retirement the next change waits, whatever the load. */
  settleMs: number;
  now: () => number;
}

/** The agent's defaults: busy at half a core for 5 s; one fewer under a fifth for 5 min; 15 s apart. */
export const DEMAND_DEFAULTS = { busyAbove: 0.5, sustainMs: 5_000, idleBelow: 0.2, retireAfterMs: 300_000, settleMs: 15_000 } as const;

export type Demand = { state: 'steady' } | { state: 'busy'; since: number } | { state: 'idle'; since: number };

export type Step = 'start' | 'retire' | 'hold';

export class WorkerDemand {
  readonly #opts: DemandOptions;
  #demand: Demand = { state: 'steady' };
  #lastChange = Number.NEGATIVE_INFINITY;

  constructor(opts: DemandOptions) {
    this.#opts = opts;
  }

  get demand(): Demand {
    return this.#demand;
  }

  /**
   * Takes the utilization of each data plane serving over the last interval, and how many may
   * serve; says whether to start one, retire one (the caller does it: the settling time counts from
   * here) or hold.
   */
  next(utilizations: readonly number[], bounds: { min: number; max: number }): Step {
    const now = this.#opts.now();
    const serving = utilizations.length;
    const total = utilizations.reduce((a, b) => a + b, 0);
    const mean = serving === 0 ? 0 : total / serving;
    // NaN (an unreadable sample) counts as neither busy nor idle.
    const busy = serving < bounds.max && mean >= this.#opts.busyAbove;
    const idle = serving > bounds.min && total / (serving - 1) < this.#opts.idleBelow;
    const kind = busy ? 'busy' : idle ? 'idle' : 'steady';
    if (kind === 'steady') {
      this.#demand = { state: 'steady' };
      return 'hold';
    }
    const since = this.#demand.state === kind ? this.#demand.since : now;
    this.#demand = { state: kind, since };
    const lasted = now - since;
    if (lasted < (kind === 'busy' ? this.#opts.sustainMs : this.#opts.retireAfterMs) || now - this.#lastChange < this.#opts.settleMs) return 'hold';
    this.#lastChange = now;
    this.#demand = { state: 'steady' };
    return kind === 'busy' ? 'start' : 'retire';
  }
}
