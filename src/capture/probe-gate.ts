// The probe gate's live half: the agent vouches for the captured pods it can serve by re-adding them
// to the vouched set (an ipset, or a set in meshlet's nftables table), with a timeout, four times
// per TTL. The kernel does the rest (see gateRules):
// connections the node opens to a captured pod pass while its entry lives and are reset once it has
// timed out. A SIGKILLed agent, or one whose event loop is stuck, stops re-adding; within the TTL
// kubelet's probes to its pods start failing, and the pods leave their Services' endpoints. Nothing
// has to run for that to happen, which is the point: the agent is the thing that failed.
import type { Logger } from 'pino';

export interface ProbeGateOptions {
  ttlMs: number;
  /** The pod IPs to vouch for now (empty while the agent cannot serve: starting, draining). */
  vouched(): string[];
  log: Logger;
  /** Puts `ips` in the vouched set for `ttlSeconds` more (ipset.ts, createVouchWriter). */
  write(ips: readonly string[], ttlSeconds: number): Promise<void>;
}

export interface ProbeGateStatus {
  ttlSeconds: number;
  vouched: number;
  lastRefresh?: string;
  failures: number;
  lastError?: string;
}

export class ProbeGate {
  readonly #opts: ProbeGateOptions;
  #timer: NodeJS.Timeout | undefined;
  #inFlight: Promise<void> | undefined;
  #vouched = 0;
  /** What the last successful refresh put in the set, and when. */
  #applied = new Set<string>();
  #lastRefresh: number | undefined;
  #failures = 0;
  #lastError: string | undefined;

  constructor(opts: ProbeGateOptions) {
    this.#opts = opts;
  }

  get ttlSeconds(): number {
    return Math.max(1, Math.round(this.#opts.ttlMs / 1000));
  }

  start(): void {
    if (this.#timer) return;
    // Four refreshes per TTL: one late or failed refresh never lets a live agent's pods drop out.
    this.#timer = setInterval(() => void this.refresh(), Math.max(250, this.#opts.ttlMs / 4)).unref();
    void this.refresh();
  }

  /** Re-adds every pod vouched for now; overlapping calls share one run. */
  refresh(): Promise<void> {
    this.#inFlight ??= this.#refresh().finally(() => { this.#inFlight = undefined; });
    return this.#inFlight;
  }

  async #refresh(): Promise<void> {
    const ips = this.#opts.vouched();
    if (ips.length !== this.#vouched) this.#opts.log.info({ component: 'probe-gate', vouched: ips.length, was: this.#vouched }, 'probe gate: pods vouched for changed');
    this.#vouched = ips.length;
    // Nothing to vouch for: the entries already there time out on their own (an agent that is
    // starting or draining must not keep a predecessor's or successor's pods alive, nor cut them off).
    if (ips.length === 0) { this.#applied = new Set(); return; }
    try {
      const started = Date.now();
      await this.#opts.write(ips, this.ttlSeconds);
      this.#applied = new Set(ips);
      this.#lastRefresh = started;
      if (this.#lastError) this.#opts.log.info({ component: 'probe-gate' }, 'probe gate refreshed again');
      this.#lastError = undefined;
    } catch (err) {
      this.#failures++;
      const first = this.#lastError === undefined;
      this.#lastError = (err as Error).message;
      if (first) this.#opts.log.error({ component: 'probe-gate', err: this.#lastError }, 'cannot refresh the probe gate; its pods will fail their probes once their entries time out');
    }
  }

  /**
   * Undefined when `ip` is vouched for with at least half the TTL to go (the hot path: no await);
   * otherwise a refresh that includes it, if the agent vouches for it at all. A pod that just got
   * its certificate is let through at once, not at the next tick.
   */
  ensure(ip: string): Promise<void> | undefined {
    if (this.#applied.has(ip) && Date.now() - (this.#lastRefresh ?? 0) < this.#opts.ttlMs / 2) return undefined;
    return (async () => {
      await this.refresh();
      // A refresh already running may have read the list before this pod was in it.
      if (!this.#applied.has(ip)) await this.refresh();
    })();
  }

  /** Stops vouching. Entries are not deleted: they time out, and a replacement agent keeps its own fresh. */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  status(): ProbeGateStatus {
    return {
      ttlSeconds: this.ttlSeconds,
      vouched: this.#vouched,
      ...(this.#lastRefresh ? { lastRefresh: new Date(this.#lastRefresh).toISOString() } : {}),
      failures: this.#failures,
      ...(this.#lastError ? { lastError: this.#lastError } : {}),
    };
  }
}
