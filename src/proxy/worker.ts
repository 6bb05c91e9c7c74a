// One data plane in a worker thread (workers.ts starts them): built from the settings it was
// given, fed snapshots, asked for its gauges and dump, told to listen and to close. It shares the
// data ports with the other workers through SO_REUSEPORT (the kernel spreads connections by their
// 4-tuple), counts into a batch the control plane absorbs, and asks the control plane's probe gate
// before it delivers to a pod it has not heard about lately.
import type { MessagePort } from 'node:worker_threads';
import type { LevelWithSilent } from 'pino';
import { type Collection, collectGarbage } from '../collect-garbage.ts';
import { BatchedTelemetry, type TelemetryBatch } from '../telemetry/batch.ts';
import { createLogger, setLogLevel } from '../telemetry/log.ts';
import { DataPlane, type DataPlaneDeps } from './data-plane.ts';
import type { WorkerShares } from './host.ts';
import type { DataPlaneSettings, DataPlaneSnapshot } from './snapshot.ts';
import type { DataPlaneDump, DataPlaneGauges } from './view.ts';

export interface WorkerInit {
  settings: DataPlaneSettings;
  index: number;
  logLevel: LevelWithSilent;
  logBase: Record<string, unknown>;
  /** Whether the control plane keeps metrics (else nothing is counted). */
  metrics: boolean;
  /** How long the probe gate's word on a pod holds here; 0: no gate (sidecar). */
  vouchFreshMs: number;
}

export type ToWorker =
  | { snapshot: DataPlaneSnapshot }
  | { ask: number; what: 'listen' | 'gauges' | 'dump' | 'close' }
  | { drainUntil: number }
  | { logLevel: LevelWithSilent }
  | { collect: Collection }
  | { shares: WorkerShares }
  | { vouched: number; error?: string };

export type FromWorker =
  | { reply: number; value?: DataPlaneGauges | DataPlaneDump; error?: string }
  | { telemetry: TelemetryBatch }
  | { vouch: number; ip: string };

/** How often a worker sends what it counted when nobody scrapes: it holds at most this much. */
const TELEMETRY_EVERY_MS = 1_000;

export function serveDataPlane(port: MessagePort, init: WorkerInit, deps: Pick<DataPlaneDeps, 'originalDestination' | 'stallProbe'> = {}): void {
  const send = (m: FromWorker) => port.postMessage(m);
  const log = createLogger(init.logLevel, { ...init.logBase, worker: init.index });
  const telemetry = init.metrics ? new BatchedTelemetry() : undefined;
  const flush = () => { if (telemetry) send({ telemetry: telemetry.take() }); };
  const vouch = new WorkerVouching(init.vouchFreshMs, (id, ip) => send({ vouch: id, ip }));
  const data = new DataPlane(init.settings, {
    log, ...deps,
    ...(telemetry ? { telemetry } : {}),
    ...(init.vouchFreshMs > 0 ? { vouchFor: (ip: string) => vouch.ensure(ip) } : {}),
  });
  const timer = telemetry ? setInterval(flush, TELEMETRY_EVERY_MS) : undefined;
  let drainUntil = Number.POSITIVE_INFINITY;

  const answer = (id: number, work: () => Promise<DataPlaneGauges | DataPlaneDump | undefined>) => {
    work().then(
      (value) => send({ reply: id, ...(value ? { value } : {}) }),
      (err: Error) => send({ reply: id, error: err.message }),
    );
  };
  port.on('message', (m: ToWorker) => {
    if ('snapshot' in m) data.apply(m.snapshot);
    else if ('drainUntil' in m) drainUntil = m.drainUntil;
    else if ('logLevel' in m) setLogLevel(log, m.logLevel);
    else if ('collect' in m) collectGarbage(m.collect);
    else if ('shares' in m) data.reshare(m.shares);
    else if ('vouched' in m) vouch.settle(m.vouched, m.error);
    else if (m.what === 'listen') answer(m.ask, async () => { await data.listen(); return undefined; });
    // The batch first: a scrape that reads the gauges also sees every connection they count.
    else if (m.what === 'gauges') answer(m.ask, async () => { flush(); return data.gauges(); });
    else if (m.what === 'dump') answer(m.ask, async () => data.dump());
    else {
      answer(m.ask, async () => {
        await data.close(() => drainUntil);
        clearInterval(timer);
        flush();
        // Every line written before the control plane ends the thread.
        await new Promise<void>((resolve) => log.flush(() => resolve()));
        return undefined;
      });
    }
  });
}

/**
 * The probe gate as a worker sees it: the control plane's gate vouches (capture/probe-gate.ts), the
 * worker remembers for a while that it did, so the hot path asks across threads only now and then.
 */
export class WorkerVouching {
  readonly #freshMs: number;
  readonly #ask: (id: number, ip: string) => void;
  readonly #now: () => number;
  readonly #until = new Map<string, number>();
  readonly #waiting = new Map<number, { ip: string; resolve(): void; reject(err: Error): void }>();
  #next = 0;

  constructor(freshMs: number, ask: (id: number, ip: string) => void, now: () => number = Date.now) {
    this.#freshMs = freshMs;
    this.#ask = ask;
    this.#now = now;
  }

  ensure(ip: string): Promise<void> | undefined {
    if ((this.#until.get(ip) ?? 0) > this.#now()) return undefined;
    return new Promise((resolve, reject) => {
      const id = ++this.#next;
      this.#waiting.set(id, { ip, resolve, reject });
      this.#ask(id, ip);
    });
  }

  settle(id: number, error: string | undefined): void {
    const w = this.#waiting.get(id);
    if (!w) return;
    this.#waiting.delete(id);
    if (error !== undefined) { w.reject(new Error(error)); return; }
    if (this.#until.size > 10_000) this.#until.clear();
    this.#until.set(w.ip, this.#now() + this.#freshMs);
    w.resolve();
  }
}
