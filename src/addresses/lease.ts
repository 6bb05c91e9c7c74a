// Leader election on a coordination.k8s.io Lease, the way client-go's leaderelection does it: the
// holder renews the Lease every retry period; another candidate takes it only once the holder has
// not renewed for the lease's whole duration, measured on the candidate's own clock from the moment
// it last saw the record change (so clock skew between nodes does not matter); every write carries
// the resourceVersion it read, so two candidates never both win. A leader that cannot renew for
// renewDeadline stops leading before its lease can expire for others; one that stops releases the
// Lease (holder cleared), and a successor takes it at its next try.
import type { Logger } from 'pino';
import { apiPath, type KubeApi } from '../kube/api.ts';
import { apiStatus } from '../kube/config.ts';

export const LEASE = { group: 'coordination.k8s.io', version: 'v1', plural: 'leases' } as const;
/** The address controllers' Lease, in their namespace. */
export const LEASE_NAME = 'meshlet-address-controller';

export interface LeaseOptions {
  api: KubeApi;
  namespace: string;
  name: string;
  /** This candidate (the pod's name): written as holderIdentity. */
  identity: string;
  /** How long a silent holder keeps the lease. */
  durationMs: number;
  /** A leader that has not renewed for this long stops leading (less than durationMs). */
  renewDeadlineMs: number;
  /** How often candidates try and the leader renews. */
  retryMs: number;
  log: Logger;
  now?: () => number;
  onStartedLeading(): void;
  onStoppedLeading(): void;
}

interface LeaseObject {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: { holderIdentity?: string; leaseDurationSeconds?: number; acquireTime?: string; renewTime?: string; leaseTransitions?: number };
}

export type ElectionState = { phase: 'following'; holder?: string } | { phase: 'leading'; since: number } | { phase: 'stopped' };

/** MicroTime, as the API writes it (RFC 3339 with microseconds). */
const microTime = (ms: number) => new Date(ms).toISOString().replace('Z', '000Z');

export class LeaderElection {
  readonly #o: LeaseOptions;
  readonly #now: () => number;
  readonly #path: string;
  #state: ElectionState = { phase: 'following' };
  #timer: NodeJS.Timeout | undefined;
  /** The last record seen and when (our clock) it last changed. */
  #observed: { key: string; at: number } | undefined;
  #lastRenew = 0;
  #running: Promise<void> | undefined;

  constructor(o: LeaseOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    this.#path = apiPath(LEASE, { namespace: o.namespace, name: o.name });
  }

  get state(): ElectionState { return this.#state; }
  get leading(): boolean { return this.#state.phase === 'leading'; }

  start(): void {
    if (this.#state.phase === 'stopped' || this.#timer || this.#running) return;
    const tick = () => {
      this.#running = this.#try().finally(() => {
        this.#running = undefined;
        if (this.#state.phase !== 'stopped') this.#timer = setTimeout(tick, this.#o.retryMs);
      });
    };
    tick();
  }

  /** Stops trying; a leader releases the Lease so that a successor need not wait for it to expire. */
  async stop(): Promise<void> {
    const wasLeading = this.#state.phase === 'leading';
    this.#state = { phase: 'stopped' };
    clearTimeout(this.#timer);
    await this.#running;
    if (!wasLeading) return;
    this.#o.onStoppedLeading();
    try {
      const lease = await this.#o.api.get<LeaseObject>(this.#path);
      if (lease.spec.holderIdentity !== this.#o.identity) return;
      await this.#o.api.send('PUT', this.#path, { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1 } });
      this.#o.log.info({ lease: this.#o.name }, 'released the lease');
    } catch (err) {
      this.#o.log.warn({ lease: this.#o.name, err: (err as Error).message }, 'could not release the lease: a successor waits for it to expire');
    }
  }

  async #try(): Promise<void> {
    const now = this.#now();
    let round: { held: boolean; holder?: string } = { held: false };
    try {
      round = await this.#acquireOrRenew(now);
    } catch (err) {
      this.#o.log.warn({ lease: this.#o.name, err: (err as Error).message }, 'lease request failed');
    }
    if (this.#state.phase === 'stopped') return;
    if (round.held) {
      this.#lastRenew = now;
      if (this.#state.phase === 'leading') return;
      this.#state = { phase: 'leading', since: now };
      this.#o.log.info({ lease: this.#o.name, identity: this.#o.identity }, 'leading');
      this.#o.onStartedLeading();
      return;
    }
    // Another holder: a leader steps down at once. Otherwise (a failed or lost write) a leader
    // keeps leading until its renew deadline passes.
    const lost = round.holder !== undefined || now - this.#lastRenew >= this.#o.renewDeadlineMs;
    if (this.#state.phase === 'leading' && lost) {
      this.#o.log.warn({ lease: this.#o.name, holder: round.holder }, round.holder ? 'the lease went to another holder: no longer leading' : 'could not renew the lease in time: no longer leading');
      this.#state = { phase: 'following', ...(round.holder ? { holder: round.holder } : {}) };
      this.#o.onStoppedLeading();
    } else if (this.#state.phase === 'following' && round.holder !== undefined) {
      this.#state = { phase: 'following', holder: round.holder };
    }
  }

  /** One round: whether this candidate holds the lease now, or who else does. */
  async #acquireOrRenew(now: number): Promise<{ held: boolean; holder?: string }> {
    const spec = (transitions: number, acquired: string) => ({
      holderIdentity: this.#o.identity, leaseDurationSeconds: Math.ceil(this.#o.durationMs / 1000),
      acquireTime: acquired, renewTime: microTime(now), leaseTransitions: transitions,
    });
    let lease: LeaseObject;
    try {
      lease = await this.#o.api.get<LeaseObject>(this.#path);
    } catch (err) {
      if (apiStatus(err) !== 404) throw err;
      return { held: await this.#write('POST', apiPath(LEASE, { namespace: this.#o.namespace }), {
        apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: this.#o.name, namespace: this.#o.namespace }, spec: spec(0, microTime(now)),
      }) };
    }
    const s = lease.spec ?? {};
    const key = `${s.holderIdentity ?? ''}|${s.renewTime ?? ''}|${lease.metadata.resourceVersion ?? ''}`;
    if (this.#observed?.key !== key) this.#observed = { key, at: now };
    const holder = s.holderIdentity ?? '';
    const mine = holder === this.#o.identity;
    const durationMs = (s.leaseDurationSeconds ?? Math.ceil(this.#o.durationMs / 1000)) * 1000;
    if (!mine && holder !== '' && now < this.#observed.at + durationMs) return { held: false, holder };
    const transitions = (s.leaseTransitions ?? 0) + (mine ? 0 : 1);
    return { held: await this.#write('PUT', this.#path, { ...lease, spec: spec(transitions, mine && s.acquireTime ? s.acquireTime : microTime(now)) }) };
  }

  /** A create or an update; a conflict (another candidate wrote first) is a lost round, not an error. */
  async #write(method: 'POST' | 'PUT', path: string, body: unknown): Promise<boolean> {
    try {
      await this.#o.api.send(method, path, body);
      return true;
    } catch (err) {
      if (apiStatus(err) === 409) return false;
      throw err;
    }
  }
}

export interface LeaseSighting {
  /** Who holds the lease ('' released, undefined never seen). */
  holder?: string;
  /** How long (this process's clock) the lease has gone without a renewal seen; undefined before the first read. */
  unseenMs?: number;
  /** No renewal seen for `staleMs`, or no holder: the table the leader writes is not being kept. */
  stale: boolean;
}

/**
 * What an agent on the address slices knows of their writer: it reads the Lease every `everyMs` and
 * notes when its record last changed on its own clock (a holder renews every second, so two reads
 * that agree mean no renewal in between). One GET a node per interval, not a watch: a watch would
 * send every renewal to every node.
 */
export class LeaseObserver {
  readonly #api: KubeApi;
  readonly #path: string;
  readonly #everyMs: number;
  readonly #staleMs: number;
  readonly #now: () => number;
  #seen: { key: string; holder: string; at: number } | undefined;
  #started: number | undefined;
  #timer: NodeJS.Timeout | undefined;

  readonly #onChange: ((s: LeaseSighting) => void) | undefined;
  #wasStale: boolean | undefined;

  /** `onChange` hears each read that flips `stale`. */
  constructor(o: { api: KubeApi; namespace: string; name: string; everyMs: number; staleMs: number; now?: () => number; onChange?(s: LeaseSighting): void }) {
    this.#onChange = o.onChange;
    this.#api = o.api;
    this.#path = apiPath(LEASE, { namespace: o.namespace, name: o.name });
    this.#everyMs = o.everyMs;
    this.#staleMs = o.staleMs;
    this.#now = o.now ?? Date.now;
  }

  start(): void {
    this.#started ??= this.#now();
    const tick = () => {
      void this.#read().finally(() => {
        if (this.#started !== undefined) this.#timer = setTimeout(tick, this.#everyMs);
      });
    };
    tick();
  }

  stop(): void {
    this.#started = undefined;
    clearTimeout(this.#timer);
  }

  sighting(): LeaseSighting {
    const now = this.#now();
    const since = this.#seen?.at ?? this.#started;
    const unseenMs = since === undefined ? undefined : now - since;
    const holder = this.#seen?.holder;
    return { ...(holder !== undefined ? { holder } : {}), ...(unseenMs !== undefined ? { unseenMs } : {}), stale: !holder || (unseenMs ?? 0) >= this.#staleMs };
  }

  async #read(): Promise<void> {
    try {
      const lease = await this.#api.get<LeaseObject>(this.#path);
      const holder = lease.spec?.holderIdentity ?? '';
      const key = `${holder}|${lease.spec?.renewTime ?? ''}`;
      if (this.#seen?.key !== key) this.#seen = { key, holder, at: this.#now() };
    } catch {
      // Unreadable (absent, forbidden, the API away): nothing new seen, so it ages.
    }
    const now = this.sighting();
    if (now.stale !== this.#wasStale) this.#onChange?.(now);
    this.#wasStale = now.stale;
  }
}
