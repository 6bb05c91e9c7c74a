// DataPlaneTelemetry for a data plane in a worker thread: it counts into plain numbers and hands
// them over as one structured-clone-safe batch (MeshMetrics.absorb in the control plane), at each
// scrape and once a second, so a worker never holds more than a second of observations.
import type { DataPlaneTelemetry, DecisionAction, MeteredConnection } from './connections.ts';
import { TcpSeriesBook, type TcpAmounts } from './tcp-series.ts';

export interface TelemetryBatch {
  tcp: TcpAmounts[];
  /** Connection setup seconds, by route. */
  setup: Array<[route: string, seconds: number]>;
  handshakes: Array<[seconds: number, ok: boolean]>;
  refused: Array<[[reporter: string, error: string], number]>;
  decisions: Array<[[action: string, policy: string], number]>;
  stalled: Array<[reason: string, number]>;
  ejected: Array<[[namespace: string, name: string], number]>;
}

/** Counts by a pair of label values. */
class PairCounts {
  readonly #counts = new Map<string, { key: [string, string]; n: number }>();
  inc(a: string, b: string): void {
    const id = `${a}\u0000${b}`;
    const c = this.#counts.get(id);
    if (c) c.n++;
    else this.#counts.set(id, { key: [a, b], n: 1 });
  }
  take(): Array<[[string, string], number]> {
    const out = [...this.#counts.values()].map((c): [[string, string], number] => [c.key, c.n]);
    this.#counts.clear();
    return out;
  }
}

export class BatchedTelemetry implements DataPlaneTelemetry {
  readonly #tcp = new TcpSeriesBook();
  #setup: TelemetryBatch['setup'] = [];
  #handshakes: TelemetryBatch['handshakes'] = [];
  readonly #refused = new PairCounts();
  readonly #decisions = new PairCounts();
  readonly #ejected = new PairCounts();
  readonly #stalled = new Map<string, number>();

  opened(c: MeteredConnection, setupSeconds: number, route: string): void {
    this.#tcp.opened(c);
    this.#setup.push([route, setupSeconds]);
  }
  closed(c: MeteredConnection): void { this.#tcp.closed(c); }
  refused(reporter: string, error: string): void { this.#refused.inc(reporter, error); }
  decision(action: DecisionAction, policy: string): void { this.#decisions.inc(action, policy); }
  tunnelStalled(reason: string): void { this.#stalled.set(reason, (this.#stalled.get(reason) ?? 0) + 1); }
  endpointEjected(namespace: string, name: string): void { this.#ejected.inc(namespace, name); }
  handshake(seconds: number, ok: boolean): void { this.#handshakes.push([seconds, ok]); }

  /** Everything counted since the last take (open connections' bytes included). */
  take(): TelemetryBatch {
    const batch: TelemetryBatch = {
      tcp: this.#tcp.takeAll(),
      setup: this.#setup,
      handshakes: this.#handshakes,
      refused: this.#refused.take(),
      decisions: this.#decisions.take(),
      stalled: [...this.#stalled],
      ejected: this.#ejected.take(),
    };
    this.#setup = [];
    this.#handshakes = [];
    this.#stalled.clear();
    return batch;
  }
}
