// The agent's upkeep of capture on its node: the rules checked (and repaired) every few seconds, the
// sets kept equal to the mesh, the bridge ports bound, and the anti-spoofing drops counted. Control
// plane: the data plane never touches the kernel's rules.
import type { Logger } from 'pino';
import { BridgeGuard, type Bindings } from './bridge-ports.ts';
import { hasNetAdmin } from './exec.ts';
import { captureFamilies, checkCapture } from './install.ts';
import { createMemberSync, type IpsetSync } from './ipset.ts';
import type { CaptureSettings } from './rules.ts';
import { addressesInNetns } from './socket.ts';
import type { CaptureTools } from './tools.ts';

/** How often the rules are read back (and repaired). */
const CAPTURE_RECHECK_MS = 5_000;

/** What the sets must hold after a mesh change (node mode; a sidecar keeps none). */
export interface CaptureMembers {
  /** This node's captured pods. */
  local: ReadonlySet<string>;
  /** Their IPv6 addresses (the IPv6 guard). */
  local6: ReadonlySet<string>;
  /** Every captured pod of the mesh and the cluster IPs the agent resolves. */
  destinations: ReadonlySet<string>;
  /** The cluster's pod ranges (address slices only: the controller-away rule), else empty. */
  podRanges: ReadonlySet<string>;
  /** This node's STRICT pods (filled only with --non-tcp-to-strict drop). */
  strict: ReadonlySet<string>;
}

export interface CaptureKeeperOptions {
  /** Sidecar mode keeps no sets: its pod's capture takes everything the pod sends. */
  config: { capture: CaptureSettings; sidecar?: unknown };
  tools: CaptureTools;
  log: Logger;
  /** This node's captured addresses now (bridge ports are re-read at each check). */
  localAddresses(): ReadonlySet<string>;
  /** Told of every change of `installed` and `synced` (readiness follows them). */
  onChange(): void;
  /** Anti-spoofing drops since the last check. */
  onSpoofed?(packets: number): void;
}

export class CaptureKeeper {
  /** Whether capture is in place (the last check found it, or repaired it). */
  installed = false;
  /** Whether every set has held the mesh's members since the first snapshot. */
  synced = false;
  readonly #opts: CaptureKeeperOptions;
  readonly #log: Logger;
  readonly #members: IpsetSync | undefined;
  readonly #destinations: IpsetSync | undefined;
  readonly #podRanges: IpsetSync | undefined;
  readonly #strict: IpsetSync | undefined;
  readonly #members6: IpsetSync | undefined;
  /** Captured addresses bound to their bridge ports, on bridge CNIs (node mode). */
  readonly #bridge: BridgeGuard | undefined;
  /** The anti-spoofing rules' kernel counters at the last check. */
  #spoofedSeen = { route: 0, bridge: 0 };
  /** The last bridge-guard failure logged (each new one is, once), and the contests logged. */
  #bridgeError: string | undefined;
  #contestsLogged = '[[],[]]';
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(opts: CaptureKeeperOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    const { capture, sidecar } = opts.config;
    // A sidecar's pod capture takes everything the pod sends: there is no set of pods to keep.
    if (!sidecar) {
      this.#members = createMemberSync(opts.tools, capture);
      this.#destinations = createMemberSync(opts.tools, capture, 'destinations');
      this.#podRanges = createMemberSync(opts.tools, capture, 'podRanges');
      this.#strict = createMemberSync(opts.tools, capture, 'strict');
      this.#bridge = new BridgeGuard((cmd, args, input) => opts.tools.tool(cmd, args, input), addressesInNetns);
      if (captureFamilies(capture).includes(6)) this.#members6 = createMemberSync(opts.tools, capture, 'captured6');
    }
  }

  /** Reads the rules now and every few seconds after, until close(). */
  async start(): Promise<void> {
    await this.#check();
  }

  /**
   * Makes every set hold `m`. `synced` turns true once all have (and stays: a failure is logged,
   * and the next snapshot tries again). Ready only then: before the IPv6 guard holds the pods, a
   * dual-stack pod's IPv6 address would be a way around the mesh; before the destinations set
   * does, connections to the mesh would go around the agent.
   */
  sync(m: CaptureMembers): void {
    const logged = (what: string) => (r: { added: number; removed: number }) => { if (r.added || r.removed) this.#log.info(r, what); };
    const synced = [
      // Bound to their bridge ports before they are captured: never a moment in which a neighbour
      // sending with a new pod's address is taken for it.
      this.#syncBridge(m.local).then(() => this.#members?.sync(m.local)).then((r) => r && logged('captured-pods ipset updated')(r)),
      this.#destinations?.sync(m.destinations).then(logged('mesh destinations set updated')),
      this.#podRanges?.sync(m.podRanges).then(logged('pod ranges set updated')),
      this.#strict?.sync(m.strict).then(logged('STRICT pods set updated (non-TCP to them dropped)')),
      this.#members6?.sync(m.local6).then(logged('captured-pods IPv6 set updated (the IPv6 guard)')),
    ];
    Promise.all(synced).then(
      () => { if (!this.synced) { this.synced = true; this.#opts.onChange(); } },
      (err) => { this.#log.error({ err: (err as Error).message }, 'cannot update the captured-pods sets'); },
    );
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
  }

  async #check(): Promise<void> {
    if (this.#opts.config.sidecar && !hasNetAdmin()) {
      // As with Istio's sidecars: the pod's init step installed capture, the proxy cannot read it.
      if (!this.installed) this.#log.info('sidecar without CAP_NET_ADMIN: capture is the init step\'s, not checked');
      this.#set(true);
      return;
    }
    try {
      const check = await checkCapture(this.#opts.tools, this.#opts.config.capture);
      const installed = check.state !== 'absent';
      if (check.spoofedDrops !== undefined) this.#countSpoofed('route', check.spoofedDrops);
      // New claims on bridge ports show up here, between registry changes.
      await this.#syncBridge(this.#opts.localAddresses());
      const bridged = await this.#bridge?.dropped().catch(() => undefined);
      if (bridged !== undefined) this.#countSpoofed('bridge', bridged);
      if (check.state === 'repaired') this.#log.warn('capture rules had changed (reordered or edited): repaired, meshlet\'s jumps first again');
      if (installed !== this.installed) this.#log.info({ installed }, 'capture state changed');
      this.#set(installed);
      if (!installed) this.#log.warn('capture is not installed on this node (run `meshlet init`); not ready');
    } catch (err) {
      this.#set(false);
      this.#log.error({ err: (err as Error).message }, 'cannot read capture state');
    }
    if (!this.#closed) this.#timer = setTimeout(() => void this.#check(), CAPTURE_RECHECK_MS).unref();
  }

  #set(installed: boolean): void {
    if (installed === this.installed) return;
    this.installed = installed;
    this.#opts.onChange();
  }

  /**
   * The kernel's count of packets the anti-spoofing rule dropped, read at each check: its increase
   * is logged and counted (a rule installed afresh starts again from 0).
   */
  #countSpoofed(rule: 'route' | 'bridge', kernelCount: number): void {
    const seen = this.#spoofedSeen[rule];
    const increase = kernelCount >= seen ? kernelCount - seen : kernelCount;
    this.#spoofedSeen[rule] = kernelCount;
    if (increase === 0) return;
    this.#opts.onSpoofed?.(increase);
    this.#log.warn({ dropped: increase, total: kernelCount, rule },
      rule === 'route'
        ? 'packets with a captured pod\'s address arrived on another interface and were dropped (anti-spoofing)'
        : 'frames with a captured pod\'s address came from another bridge port and were dropped (anti-spoofing)');
  }

  /**
   * Binds this node's captured addresses to their bridge ports (bridge-ports.ts); contests are
   * logged. A failure is logged, once per message: the node keeps the reverse-path check.
   */
  async #syncBridge(local: ReadonlySet<string>): Promise<void> {
    if (!this.#bridge) return;
    let bindings: Bindings;
    try {
      ({ bindings } = await this.#bridge.sync(local));
      this.#bridgeError = undefined;
    } catch (err) {
      const message = (err as Error).message;
      if (message !== this.#bridgeError) this.#log.error({ err: message }, 'cannot bind captured addresses to their bridge ports');
      this.#bridgeError = message;
      return;
    }
    // Each contest is logged when it starts (the check runs every few seconds).
    const contests = JSON.stringify([[...bindings.contested], [...bindings.claimedElsewhere]]);
    if (contests === this.#contestsLogged) return;
    this.#contestsLogged = contests;
    for (const [ip, ports] of bindings.contested) {
      this.#log.warn({ err: 'address_contested', ip, ports }, 'a captured pod\'s address is held behind several bridge ports: bound to none, its frames dropped');
    }
    for (const [ip, ports] of bindings.claimedElsewhere) {
      this.#log.warn({ err: 'address_contested', ip, boundTo: bindings.bound.get(ip), ports }, 'another bridge port claims a captured pod\'s address: its frames are dropped');
    }
  }
}
