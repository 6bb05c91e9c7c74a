// N data planes sharing the data ports through SO_REUSEPORT: one in the control plane's thread and
// N-1 in worker threads of this process (worker.ts), or N in threads. Threads, not processes: one
// process keeps one PID, one RSS and one set of capabilities for the DaemonSet, and the kernel, not
// this thread, spreads the connections. The control plane keeps everything fetched once per node
// (certificates, the mesh, the probe gate) and hands the same snapshot to each. The one in this
// thread saves a thread's memory (bench/README.md, "Agent memory"). With a minimum below N, the
// others start only when those serving are busy (worker-demand.ts), and what is split among the
// data planes is shared out again among those serving.
import { type EventLoopUtilization, performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import type { LevelWithSilent, Logger } from 'pino';
import type { TelemetryBatch } from '../telemetry/batch.ts';
import { DataPlane, type DataPlaneDeps } from './data-plane.ts';
import type { Collection } from '../collect-garbage.ts';
import { type DataPlaneHost, inThisThread, type ServingDataPlane, reclaimCounters, sharedCounters, withShares, workerSettings, type WorkerShares, workerShares } from './host.ts';
import type { DataPlaneSettings, DataPlaneSnapshot } from './snapshot.ts';
import { mergeDumps, mergeGauges, type DataPlaneDump, type DataPlaneGauges } from './view.ts';
import { DEMAND_DEFAULTS, type DemandOptions, WorkerDemand } from './worker-demand.ts';
import type { FromWorker, ToWorker, WorkerInit } from './worker.ts';

export interface WorkersOptions {
  workers: number;
  settings: DataPlaneSettings;
  log: Logger;
  logBase: Record<string, unknown>;
  /** Where each worker's counts go (the control plane's metrics), when there are metrics. */
  absorb?(batch: TelemetryBatch): void;
  /** The probe gate (capture/probe-gate.ts ensure), and how long its word holds in a worker; none in a sidecar. */
  vouch?: { ensure(ip: string): Promise<void> | undefined; freshMs: number };
  /** The worker's entry (tests inject the original destination through their own). */
  entry?: URL;
  /** Set: data plane 0 runs in this thread, built with these, and N-1 in threads. */
  inThisThread?: DataPlaneDeps;
  /** Data planes started at once (default all); the rest start when those serving are busy. */
  minWorkers?: number;
  /** When (worker-demand.ts), how often it is sampled, and each data plane's utilization (tests inject it). */
  demand?: Partial<DemandOptions> & { sampleMs?: number; utilization?(index: number): number };
}

/** How often the data planes' utilization is read while some have not started. */
const SAMPLE_MS = 1_000;

type Pending = { resolve(v: unknown): void; reject(err: Error): void };

/** One data plane in a worker thread, driven through messages (worker.ts), seen as a host of its own. */
class DataPlaneWorker implements ServingDataPlane {
  readonly workers = 1;
  readonly thread: Worker;
  readonly #log: Logger;
  readonly #pending = new Map<number, Pending>();
  #next = 0;
  #exited: Error | undefined;
  /** Told to close (its exit is the end asked for, not a death to replace), and until when it drains. */
  #closing: Promise<void> | undefined;
  #drainUntil: () => number = () => 0;

  /** `onExit`: the thread ended, as asked or not. */
  constructor(entry: URL, init: WorkerInit, opts: WorkersOptions, onExit: (code: number, asked: boolean) => void) {
    this.#log = opts.log;
    this.thread = new Worker(entry, { workerData: init });
    this.thread.on('message', (m: FromWorker) => {
      if ('telemetry' in m) opts.absorb?.(m.telemetry);
      else if ('vouch' in m) {
        Promise.resolve(opts.vouch?.ensure(m.ip)).then(
          () => this.#post({ vouched: m.vouch }),
          (err: Error) => this.#post({ vouched: m.vouch, error: err.message }),
        );
      } else {
        const p = this.#pending.get(m.reply);
        this.#pending.delete(m.reply);
        if (m.error !== undefined) p?.reject(new Error(m.error)); else p?.resolve(m.value);
      }
    });
    this.thread.on('error', (err) => opts.log.error({ err: err.message, worker: init.index }, 'data-plane worker failed'));
    this.thread.on('exit', (code) => {
      this.#exited = new Error(`data-plane worker ${init.index} exited (code ${code})`);
      for (const p of this.#pending.values()) p.reject(this.#exited);
      this.#pending.clear();
      onExit(code, this.#closing !== undefined);
    });
  }

  apply(snapshot: DataPlaneSnapshot): void { this.#post({ snapshot }); }
  setLogLevel(level: LevelWithSilent): void { this.#post({ logLevel: level }); }
  collectGarbage(type: Collection): void { this.#post({ collect: type }); }
  reshare(shares: WorkerShares): void { this.#post({ shares }); }
  async listen(): Promise<void> { await this.#ask('listen'); }
  gauges(): Promise<DataPlaneGauges> { return this.#ask('gauges'); }
  dump(): Promise<DataPlaneDump> { return this.#ask('dump'); }

  /** Asked again (a retiring worker when the agent stops), the drain's end is the new one's. */
  close(drainUntil: () => number): Promise<void> {
    this.#drainUntil = drainUntil;
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    // A destroy during the drain moves its end: the worker is told the new one.
    let told = this.#drainUntil();
    this.#post({ drainUntil: told });
    const watch = setInterval(() => {
      if (this.#drainUntil() !== told) this.#post({ drainUntil: told = this.#drainUntil() });
    }, 50);
    try {
      await this.#ask('close').catch((err: Error) => this.#log.warn({ err: err.message }, 'data-plane worker did not close cleanly'));
    } finally {
      clearInterval(watch);
    }
    await this.thread.terminate();
  }

  #post(m: ToWorker): void {
    if (!this.#exited) this.thread.postMessage(m);
  }

  #ask<T>(what: 'listen' | 'gauges' | 'dump' | 'close'): Promise<T> {
    if (this.#exited) return Promise.reject(this.#exited);
    const id = ++this.#next;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.thread.postMessage({ ask: id, what } satisfies ToWorker);
    });
  }
}

export class DataPlaneWorkers implements DataPlaneHost {
  /** The most data planes this agent runs (--workers). */
  readonly maxWorkers: number;
  /** Those serving now, data plane i at index i. */
  readonly #all: ServingDataPlane[];
  /** Retired: no new connections, finishing their open ones (still sent snapshots: policy holds). */
  readonly #retiring = new Set<ServingDataPlane>();
  readonly #log: Logger;
  /** The node's settings, before they are shared out. */
  readonly #node: DataPlaneSettings;
  readonly #min: number;
  readonly #start: (index: number, serving: number) => DataPlaneWorker;
  readonly #demand: WorkerDemand;
  readonly #utilization: (index: number) => number;
  readonly #loops = new WeakMap<ServingDataPlane, EventLoopUtilization>();
  readonly #sampleMs: number;
  #sampling: NodeJS.Timeout | undefined;
  #growing = false;
  /** What a replacement worker is given: the last snapshot, and whether to listen. */
  #snapshot: DataPlaneSnapshot | undefined;
  #listening = false;
  #closing = false;
  /** Workers replaced after they died. */
  replaced = 0;

  constructor(opts: WorkersOptions) {
    this.maxWorkers = opts.workers;
    this.#log = opts.log;
    this.#node = opts.settings;
    const first = this.#min = Math.min(opts.workers, Math.max(1, opts.minWorkers ?? opts.workers));
    const settings = workerSettings(opts.settings, first);
    const entry = opts.entry ?? new URL('./worker-main.js', import.meta.url);
    // Each worker thread mirrors its counts (shared-cells.ts), given back once it exits. A worker
    // starts with the share of those serving once it does.
    this.#start = (index, serving) => {
      const own = sharedCounters();
      const w: DataPlaneWorker = new DataPlaneWorker(entry, {
        settings: { ...withShares(settings, workerShares(opts.settings, serving)), ownSlots: own }, index, logLevel: opts.log.level as LevelWithSilent, logBase: opts.logBase,
        metrics: opts.absorb !== undefined, vouchFreshMs: opts.vouch?.freshMs ?? 0,
      }, opts, (code, asked) => {
        reclaimCounters(settings.sharedSlots!, own);
        this.#exited(w, index, code, asked);
      });
      return w;
    };
    const local = opts.inThisThread;
    this.#all = [];
    for (let index = 0; index < first; index++) this.#all.push(index === 0 && local ? inThisThread(new DataPlane(settings, local)) : this.#start(index, first));
    this.#demand = new WorkerDemand({ ...DEMAND_DEFAULTS, now: Date.now, ...opts.demand });
    this.#sampleMs = opts.demand?.sampleMs ?? SAMPLE_MS;
    this.#utilization = opts.demand?.utilization ?? ((index) => this.#loopUtilization(index));
  }

  /** How many data planes serve now. */
  get workers(): number {
    return this.#all.length;
  }

  /**
   * A worker that died (a bug, not a peer's bytes: those are errors the data plane handles) took
   * its share of the open connections along; a new one takes its place in the port group, with the
   * last snapshot, so the node goes on serving at full strength.
   */
  #exited(dead: DataPlaneWorker, index: number, code: number, asked: boolean): void {
    // Its connections ended with it: their slots and redirects were given back (the caller).
    this.#retiring.delete(dead);
    if (asked || this.#closing || this.#all[index] !== dead) return;
    this.#log.error({ worker: index, code }, 'data-plane worker died; starting another');
    const w = this.#start(index, this.#all.length);
    this.#all[index] = w;
    this.replaced++;
    if (this.#snapshot) w.apply(this.#snapshot);
    if (this.#listening) {
      w.listen().catch((err: Error) => this.#log.error({ worker: index, err: err.message }, 'replacement data-plane worker cannot listen'));
    }
  }

  /** The threads now serving (a test ends one to see it replaced). */
  get threads(): readonly Worker[] {
    return this.#all.flatMap((w) => (w instanceof DataPlaneWorker ? [w.thread] : []));
  }

  /** Those serving, then those retiring (their open connections still count, and follow policy). */
  get #everyone(): ServingDataPlane[] {
    return [...this.#all, ...this.#retiring];
  }

  /** What each data plane answers; a retiring one that ended meanwhile is left out. */
  #askEveryone<T>(ask: (w: ServingDataPlane) => Promise<T>): Promise<T[]> {
    return Promise.all([
      ...this.#all.map(ask),
      ...[...this.#retiring].map((w) => ask(w).catch(() => undefined)),
    ]).then((all) => all.filter((x): x is Awaited<T> => x !== undefined));
  }

  apply(snapshot: DataPlaneSnapshot): void {
    this.#snapshot = snapshot;
    for (const w of this.#everyone) w.apply(snapshot);
  }

  async listen(): Promise<void> {
    await Promise.all(this.#all.map((w) => w.listen()));
    this.#listening = true;
    if (this.#min < this.maxWorkers && !this.#sampling) {
      this.#sampling = setInterval(() => this.#sample(), this.#sampleMs);
      this.#sampling.unref();
    }
  }

  #sample(): void {
    if (this.#closing || this.#growing) return;
    const step = this.#demand.next(this.#all.map((_, index) => this.#utilization(index)), { min: this.#min, max: this.maxWorkers });
    if (step === 'start') this.#grow();
    else if (step === 'retire') this.#retire();
  }

  /** One more data plane: it listens, then those already serving give up their part of the shares. */
  #grow(): void {
    const index = this.#all.length;
    const serving = index + 1;
    const w = this.#start(index, serving);
    this.#all.push(w);
    this.#growing = true;
    if (this.#snapshot) w.apply(this.#snapshot);
    w.listen().then(() => {
      this.#reshare(w);
      this.#log.info({ worker: index, serving, most: this.maxWorkers }, 'data planes busy: another started');
    }, (err: Error) => {
      // Not serving: the node goes on with those it had, and may try again when busy.
      this.#log.error({ worker: index, err: err.message }, 'a data plane started for the load cannot listen');
      this.#all.splice(this.#all.indexOf(w), 1);
      void w.close(() => 0);
    }).finally(() => { this.#growing = false; });
  }

  /**
   * The last started stops taking connections (its listeners close; the kernel hands what waits in
   * their queues to the others: tcp_migrate_req) and ends once its open ones have; its thread's
   * memory goes with it.
   */
  #retire(): void {
    const w = this.#all.pop()!;
    this.#retiring.add(w);
    this.#reshare();
    this.#log.info({ worker: this.#all.length, serving: this.#all.length, least: this.#min }, 'data planes quiet: one retires once its connections end');
    void w.close(() => Number.POSITIVE_INFINITY);
  }

  /** Each serving data plane's share, but `except`'s (started with it). */
  #reshare(except?: ServingDataPlane): void {
    const shares = workerShares(this.#node, this.#all.length);
    for (const w of this.#all) if (w !== except) w.reshare(shares);
  }

  /** The share of the last interval data plane `index`'s event loop spent running. */
  #loopUtilization(index: number): number {
    const w = this.#all[index]!;
    const now = w instanceof DataPlaneWorker ? w.thread.performance.eventLoopUtilization() : performance.eventLoopUtilization();
    const before = this.#loops.get(w);
    this.#loops.set(w, now);
    if (!before) return 0;
    return (w instanceof DataPlaneWorker ? w.thread.performance.eventLoopUtilization(now, before) : performance.eventLoopUtilization(now, before)).utilization;
  }

  async gauges(): Promise<DataPlaneGauges> {
    return mergeGauges(await this.#askEveryone((w) => w.gauges()));
  }

  async dump(): Promise<DataPlaneDump> {
    return mergeDumps(await this.#askEveryone((w) => w.dump()));
  }

  setLogLevel(level: LevelWithSilent): void {
    for (const w of this.#everyone) w.setLogLevel(level);
  }

  collectGarbage(type: Collection): void {
    for (const w of this.#everyone) w.collectGarbage(type);
  }

  async close(drainUntil: () => number): Promise<void> {
    this.#closing = true;
    clearInterval(this.#sampling);
    await Promise.all(this.#everyone.map((w) => w.close(drainUntil)));
  }
}
