// Anti-spoofing on bridge CNIs. The reverse-path check (rules.ts, antiSpoofRules) stops a pod from
// sending with a co-located pod's address only where each pod has a route of its own (a veth per
// pod). Where the node's pods hang off one bridge (the bridge CNI, flannel, kubenet), every pod's
// address routes through the bridge, so the check passes for any of them, and a pod that sends
// with a captured neighbour's address was taken for it by the agent (it got the neighbour's
// identity across the mesh). On such nodes each captured pod's address is bound to the bridge port
// whose other end (in the pod's network namespace) holds it, and a frame that carries it from any
// other port is dropped in the bridge, before routing and capture.
//
// Who holds an address is read from the port's peer: the kernel numbers the pod's namespace for
// this one (the veth's link-netnsid), and one netlink dump reads that namespace's addresses with
// CAP_NET_ADMIN alone (capture/socket.ts addressesInNetns), whatever the container runtime. A pod
// cannot change that pairing, only the addresses on its side; so a binding, once made, stays with
// its port while that port still holds the address, and an address two ports claim when it is
// first seen is bound to neither (dropped from both: a spoofer's denial of service, never its
// success). Every contest is reported.
import type { PeerAddress } from './socket.ts';

/** A bridge port of this node and the IPv4 addresses of the interface at its other end. */
export interface PortAddresses {
  port: string;
  ips: string[];
}

/** Runs a capture tool and returns its output (capture/tools.ts CaptureTools.tool). */
export type RunTool = (cmd: string, args: string[], input?: string) => Promise<string>;

interface LinkJson {
  ifname: string;
  master?: string;
  link_index?: number;
  link_netnsid?: number;
}

/**
 * Pairs this node's bridge ports (`links`: `ip -j link show` here) with the addresses their peers
 * hold: `addressesIn(nsid)` reads the namespace this one numbers `nsid` (throws when it is gone).
 */
export function pairPorts(links: string, addressesIn: (nsid: number) => PeerAddress[]): PortAddresses[] {
  const all = JSON.parse(links || '[]') as LinkJson[];
  const bridges = new Set(all.flatMap((l) => (l.master ? [l.master] : [])));
  const byNetns = new Map<number, PeerAddress[]>();
  const out: PortAddresses[] = [];
  for (const p of all) {
    // A bridge's veth ports with a peer in another namespace: a pod's. Not a bridge under a master.
    if (!p.master || p.link_netnsid === undefined || p.link_index === undefined || bridges.has(p.ifname)) continue;
    let peer = byNetns.get(p.link_netnsid);
    if (!peer) {
      try {
        peer = addressesIn(p.link_netnsid);
      } catch {
        peer = []; // the namespace went away while we looked: it holds nothing
      }
      byNetns.set(p.link_netnsid, peer);
    }
    out.push({ port: p.ifname, ips: peer.filter((a) => a.index === p.link_index).map((a) => a.ip) });
  }
  return out;
}

export interface Bindings {
  /** Captured address -> the bridge port that may send it. */
  bound: Map<string, string>;
  /** Captured addresses more than one port claimed when first seen: bound to none (dropped from all). */
  contested: Map<string, string[]>;
  /** Bound addresses that another port now claims too: the binding stays; reported. */
  claimedElsewhere: Map<string, string[]>;
}

/**
 * The bindings for this node's captured addresses (`local`), from the previous ones and what the
 * ports hold now. An address on no bridge port (a routed CNI's pod) is not bound: the reverse-path
 * check covers it.
 */
export function bindAddresses(previous: ReadonlyMap<string, string>, local: ReadonlySet<string>, ports: readonly PortAddresses[]): Bindings {
  const holders = new Map<string, string[]>();
  for (const p of ports) for (const ip of p.ips) if (local.has(ip)) holders.set(ip, [...(holders.get(ip) ?? []), p.port]);
  const out: Bindings = { bound: new Map(), contested: new Map(), claimedElsewhere: new Map() };
  for (const [ip, claimants] of holders) {
    const kept = previous.get(ip);
    if (kept !== undefined && claimants.includes(kept)) {
      out.bound.set(ip, kept);
      const others = claimants.filter((c) => c !== kept);
      if (others.length > 0) out.claimedElsewhere.set(ip, others);
    } else if (claimants.length === 1) {
      out.bound.set(ip, claimants[0] as string);
    } else {
      out.contested.set(ip, claimants);
    }
  }
  return out;
}

export const BRIDGE_TABLE = ['bridge', 'meshlet'] as const;
const T = BRIDGE_TABLE.join(' ');
/** Named, so the drop count survives the chain being rewritten. */
const COUNTER = 'spoofed';

/**
 * The bridge table with exactly these bindings, in one nft transaction: captured addresses seen on
 * bridge ports (`claimed4`) pass only from their bound port (`bound4`); contested ones from none.
 */
export function bridgeTableScript(b: Pick<Bindings, 'bound' | 'contested'>): string {
  const claimed = [...b.bound.keys(), ...b.contested.keys()];
  const bound = [...b.bound].map(([ip, port]) => `${ip} . "${port}"`);
  return [
    `add table ${T}`,
    `add set ${T} claimed4 { type ipv4_addr; }`,
    `add set ${T} bound4 { type ipv4_addr . ifname; }`,
    `add counter ${T} ${COUNTER}`,
    // Before anything else in the bridge (conntrack and br_netfilter come later).
    `add chain ${T} prerouting { type filter hook prerouting priority -300; policy accept; }`,
    `flush chain ${T} prerouting`,
    `add rule ${T} prerouting ether type ip ip saddr @claimed4 ip saddr . iifname != @bound4 counter name ${COUNTER} drop comment "meshlet: a captured pod's address from another bridge port"`,
    `flush set ${T} claimed4`,
    `flush set ${T} bound4`,
    ...(claimed.length > 0 ? [`add element ${T} claimed4 { ${claimed.join(', ')} }`] : []),
    ...(bound.length > 0 ? [`add element ${T} bound4 { ${bound.join(', ')} }`] : []),
    '',
  ].join('\n');
}

/** The drop count from `nft list counter bridge meshlet spoofed`. */
export function parseCounter(text: string): number | undefined {
  const m = /packets (\d+)/.exec(text);
  return m ? Number(m[1]) : undefined;
}

export interface BridgeSync {
  bindings: Bindings;
  /** Whether the table was written (the bindings changed). */
  written: boolean;
}

/**
 * Keeps the bridge table in step with this node's captured addresses. Nothing is written on a node
 * whose captured pods are on no bridge (a routed CNI) until one is.
 */
export class BridgeGuard {
  readonly #run: RunTool;
  readonly #addressesIn: (nsid: number) => PeerAddress[];
  #bound = new Map<string, string>();
  #written: string | undefined;
  /** One sync at a time (a registry change and the capture check both ask): each starts from the last one's bindings. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(run: RunTool, addressesIn: (nsid: number) => PeerAddress[]) {
    this.#run = run;
    this.#addressesIn = addressesIn;
  }

  /** Reads the ports, binds `local`'s addresses, writes the table when that changed. */
  sync(local: ReadonlySet<string>): Promise<BridgeSync> {
    const next = this.#queue.then(() => this.#sync(local));
    this.#queue = next.catch(() => undefined);
    return next;
  }

  async #sync(local: ReadonlySet<string>): Promise<BridgeSync> {
    // No captured pod and no table yet: nothing to bind, nothing to read.
    if (local.size === 0 && this.#written === undefined) return { bindings: bindAddresses(this.#bound, local, []), written: false };
    const ports = pairPorts(await this.#run('ip', ['-j', 'link', 'show']), this.#addressesIn);
    const bindings = bindAddresses(this.#bound, local, ports);
    this.#bound = bindings.bound;
    const script = bridgeTableScript(bindings);
    const needed = bindings.bound.size > 0 || bindings.contested.size > 0 || this.#written !== undefined;
    if (!needed || script === this.#written) return { bindings, written: false };
    await this.#run('nft', ['-f', '-'], script);
    this.#written = script;
    return { bindings, written: true };
  }

  /** Frames dropped so far (undefined before the table exists). */
  async dropped(): Promise<number | undefined> {
    if (this.#written === undefined) return undefined;
    return parseCounter(await this.#run('nft', ['list', 'counter', ...BRIDGE_TABLE, COUNTER]));
  }
}
