// The nftables capture backend, for nodes where kube-proxy runs in nftables mode. kube-proxy then
// translates Services in a table of its own, in a nat chain at the dstnat priority (-100), the
// same priority as iptables' nat PREROUTING: which of the two runs first would depend on which was
// registered first. meshlet's table hooks prerouting at dstnat - 10, so its REDIRECT always comes
// first (and, being NAT, ends NAT for the connection: kube-proxy's DNAT never sees it).
//
// IPv4 lives in one table (`ip meshlet`): the sets (captured pods, destinations in the mesh, pod
// ranges, STRICT pods, pods the agent vouches for, with timeouts) and the chains, the same rules as the iptables
// backend's (anti-spoofing, capture, probe gate, non-TCP to STRICT pods, source marks). The IPv6
// guard has a table of its own (`ip6 meshlet`: the captured pods' IPv6 addresses and a forward chain; see
// rules.ts, ipv6GuardRules). Pure text here; the commands run in install.ts, ipset.ts and
// probe-gate.ts like the iptables ones.
import { ANTI_SPOOF_COMMENT, type CaptureSettings, type IpFamily, IPV6_GUARD_COMMENT, NON_TCP_COMMENT, nftSourceRule } from './rules.ts';

/** Family and name of meshlet's table, as nft takes them: `nft list table ip meshlet`. */
export const NFT_TABLE = ['ip', 'meshlet'] as const;
/** The IPv6 guard's table. */
export const NFT_TABLE6 = ['ip6', 'meshlet'] as const;
const T = NFT_TABLE.join(' ');
const T6 = NFT_TABLE6.join(' ');

/** Each chain's declaration and rules exactly as `nft list table` prints them. */
export function nftChains(s: CaptureSettings): Record<'antispoof' | 'prerouting' | 'output' | 'forward' | 'source', string[]> {
  const captured = `@${s.ipset}`;
  return {
    // Anti-spoofing (see rules.ts, antiSpoofRules): strict reverse path for captured pods' addresses.
    // Its counter is what the agent reports as spoofed packets dropped; `nft list` prints its values,
    // which parseNftTable sets apart.
    antispoof: [
      'type filter hook prerouting priority raw; policy accept;',
      `ip saddr ${captured} fib saddr . iif oif missing counter drop comment "${ANTI_SPOOF_COMMENT}"`,
    ],
    prerouting: [
      'type nat hook prerouting priority dstnat - 10; policy accept;',
      `meta l4proto tcp ip saddr ${captured} ip daddr @${s.destinationsIpset} redirect to :${s.outboundPort} comment "meshlet: captured pod to the mesh"`,
      `meta l4proto tcp ip saddr ${captured} ip daddr @${s.podRangesIpset} redirect to :${s.outboundPort} comment "meshlet: captured pod to an unknown pod"`,
      `ip daddr ${captured} tcp dport ${s.tunnelPort} redirect to :${s.tunnelPort} comment "meshlet: tunnel to captured pod"`,
      `meta l4proto tcp ip daddr ${captured} redirect to :${s.inboundPlaintextPort} comment "meshlet: plaintext to captured pod"`,
    ],
    // The probe gate (see rules.ts, gateRules).
    output: [
      'type filter hook output priority filter - 10; policy accept;',
      `ip daddr ${captured} ip daddr != @${s.gateIpset} ct state new reject with tcp reset comment "meshlet: captured pod the agent does not vouch for"`,
    ],
    // Non-TCP to STRICT pods (see rules.ts, nonTcpRules); nft lists the protocols by number.
    forward: [
      'type filter hook forward priority filter - 10; policy accept;',
      `meta l4proto != { icmp, tcp } ip daddr @${s.strictIpset} drop comment "${NON_TCP_COMMENT}"`,
    ],
    // Source preservation (see rules.ts, SOURCE_MARK).
    source: ['type filter hook prerouting priority mangle; policy accept;', nftSourceRule()],
  };
}

/** The ip6 table's one chain: the IPv6 guard, as `nft list table ip6 meshlet` prints it. */
export function nftChains6(s: CaptureSettings): Record<'forward', string[]> {
  // nft implies (and does not list) `meta l4proto tcp` for a TCP reset.
  return {
    forward: [
      'type filter hook forward priority filter - 10; policy accept;',
      `ip6 daddr @${s.ipset6} ct state new reject with tcp reset comment "${IPV6_GUARD_COMMENT}"`,
    ],
  };
}

/**
 * `nft -f` input that installs or repairs the table in one transaction. `add` leaves the table and
 * the sets (and their members) as they are when they exist; each chain is flushed and refilled.
 */
export function nftInstallScript(s: CaptureSettings, families: readonly IpFamily[]): string {
  const lines = [
    `add table ${T}`,
    `add set ${T} ${s.ipset} { type ipv4_addr; }`,
    `add set ${T} ${s.destinationsIpset} { type ipv4_addr; }`,
    `add set ${T} ${s.strictIpset} { type ipv4_addr; }`,
    `add set ${T} ${s.podRangesIpset} { type ipv4_addr; flags interval; }`,
    `add set ${T} ${s.gateIpset} { type ipv4_addr; flags timeout; }`,
    ...chainLines(T, nftChains(s)),
  ];
  if (families.includes(6)) lines.push(`add table ${T6}`, `add set ${T6} ${s.ipset6} { type ipv6_addr; }`, ...chainLines(T6, nftChains6(s)));
  return `${lines.join('\n')}\n`;
}

function chainLines(table: string, chains: Record<string, string[]>): string[] {
  const lines: string[] = [];
  for (const [name, [decl, ...rules]] of Object.entries(chains)) {
    lines.push(`add chain ${table} ${name} { ${decl} }`, `flush chain ${table} ${name}`);
    for (const rule of rules) lines.push(`add rule ${table} ${name} ${rule}`);
  }
  return lines;
}

/**
 * The chains of `nft list table ip meshlet` output: name -> declaration and rules, trimmed, with
 * counters' values taken out (`counter`, as written); and the packets each counted rule matched.
 */
export function parseNftTable(text: string): Map<string, string[]> & { packets: Map<string, number> } {
  const chains = Object.assign(new Map<string, string[]>(), { packets: new Map<string, number>() });
  let current: string[] | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const m = /^chain (\S+) \{$/.exec(line);
    if (m) { chains.set(m[1] as string, current = []); continue; }
    if (line === '}') { current = undefined; continue; }
    if (!current || !line) continue;
    const counted = /\bcounter packets (\d+) bytes \d+/.exec(line);
    const rule = line.replace(/\s+# handle \d+$/, '').replace(/\bcounter packets \d+ bytes \d+/, 'counter');
    if (counted) chains.packets.set(rule, Number(counted[1]));
    current.push(rule);
  }
  return chains;
}

/** Packets the anti-spoofing rule dropped, from `nft list table ip meshlet`; undefined when absent. */
export function nftSpoofedDrops(s: CaptureSettings, listed: string | undefined): number | undefined {
  return listed === undefined ? undefined : parseNftTable(listed).packets.get(nftChains(s).antispoof[1] as string);
}

/**
 * True when every chain holds exactly what nftInstallScript writes, given `nft list table` of the ip
 * table and (with IPv6 among the families) of the ip6 table; undefined is a table that does not exist.
 */
export function nftIsInstalled(s: CaptureSettings, listed: { ip: string | undefined; ip6: string | undefined; families: readonly IpFamily[] }): boolean {
  const holds = (text: string | undefined, chains: Record<string, string[]>) => {
    if (text === undefined) return false;
    const have = parseNftTable(text);
    return Object.entries(chains).every(([name, want]) => JSON.stringify(have.get(name)) === JSON.stringify(want));
  };
  return holds(listed.ip, nftChains(s)) && (!listed.families.includes(6) || holds(listed.ip6, nftChains6(s)));
}

/** `nft -f` input that makes the captured set's members `desired`, or undefined when they are. */
export function nftMembersScript(table: readonly string[], setName: string, current: ReadonlySet<string>, desired: ReadonlySet<string>): { script?: string; added: number; removed: number } {
  const add = [...desired].filter((ip) => !current.has(ip));
  const del = [...current].filter((ip) => !desired.has(ip));
  const lines: string[] = [];
  const t = table.join(' ');
  if (add.length > 0) lines.push(`add element ${t} ${setName} { ${add.join(', ')} }`);
  if (del.length > 0) lines.push(`delete element ${t} ${setName} { ${del.join(', ')} }`);
  return { ...(lines.length > 0 ? { script: `${lines.join('\n')}\n` } : {}), added: add.length, removed: del.length };
}

/**
 * `nft -f` input that vouches for exactly `ips` for `ttlSeconds` more: the set is flushed and
 * refilled in one transaction (re-adding an element does not restart its timeout on every kernel).
 */
export function nftVouchScript(setName: string, ips: readonly string[], ttlSeconds: number): string {
  return `flush set ${T} ${setName}\nadd element ${T} ${setName} { ${ips.map((ip) => `${ip} timeout ${ttlSeconds}s`).join(', ')} }\n`;
}

/** Members of a set from `nft -j list set` output (plain values, prefixes, or elements with timeouts). */
export function parseNftSetJson(json: string): Set<string> {
  const out = new Set<string>();
  const doc = JSON.parse(json) as { nftables?: Array<{ set?: { elem?: unknown[] } }> };
  for (const item of doc.nftables ?? []) {
    for (const e of item.set?.elem ?? []) {
      if (typeof e === 'string') out.add(e);
      else if (e && typeof e === 'object' && 'prefix' in e) {
        // An interval set's element (the pod ranges): printed as a prefix.
        const { addr, len } = (e as { prefix: { addr?: unknown; len?: unknown } }).prefix;
        if (typeof addr === 'string' && typeof len === 'number') out.add(len === 32 ? addr : `${addr}/${len}`);
      } else if (e && typeof e === 'object' && 'elem' in e) {
        const val = (e as { elem: { val?: unknown } }).elem.val;
        if (typeof val === 'string') out.add(val);
      }
    }
  }
  return out;
}
