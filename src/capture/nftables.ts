// The nftables capture backend, for nodes where kube-proxy runs in nftables mode. kube-proxy then
// translates Services in a table of its own, in a nat chain at the dstnat priority (-100), the
// same priority as iptables' nat PREROUTING: which of the two runs first would depend on which was
// registered first. meshlet's table hooks prerouting at dstnat - 10, so its REDIRECT always comes
// first (and, being NAT, ends NAT for the connection: kube-proxy's DNAT never sees it).
//
// Everything lives in one table (`ip meshlet`): the two sets (captured pods; pods the agent vouches
// for, with timeouts) and two chains, the same rules as the iptables backend's. Pure text here; the
// commands run in install.ts, ipset.ts and probe-gate.ts like the iptables ones.
import { type CaptureSettings, nftSourceRule } from './rules.ts';

/** Family and name of meshlet's table, as nft takes them: `nft list table ip meshlet`. */
export const NFT_TABLE = ['ip', 'meshlet'] as const;
const T = NFT_TABLE.join(' ');

/** Each chain's declaration and rules exactly as `nft list table` prints them. */
export function nftChains(s: CaptureSettings): Record<'prerouting' | 'output' | 'source', string[]> {
  const captured = `@${s.ipset}`;
  return {
    prerouting: [
      'type nat hook prerouting priority dstnat - 10; policy accept;',
      `meta l4proto tcp ip saddr ${captured} redirect to :${s.outboundPort} comment "meshlet: captured pod outbound"`,
      `ip daddr ${captured} tcp dport ${s.tunnelPort} redirect to :${s.tunnelPort} comment "meshlet: tunnel to captured pod"`,
      `meta l4proto tcp ip daddr ${captured} redirect to :${s.inboundPlaintextPort} comment "meshlet: plaintext to captured pod"`,
    ],
    // The probe gate (see rules.ts, gateRules).
    output: [
      'type filter hook output priority filter - 10; policy accept;',
      `ip daddr ${captured} ip daddr != @${s.gateIpset} ct state new reject with tcp reset comment "meshlet: captured pod the agent does not vouch for"`,
    ],
    // Source preservation (see rules.ts, SOURCE_MARK).
    source: ['type filter hook prerouting priority mangle; policy accept;', nftSourceRule()],
  };
}

/**
 * `nft -f` input that installs or repairs the table in one transaction. `add` leaves the table and
 * the sets (and their members) as they are when they exist; each chain is flushed and refilled.
 */
export function nftInstallScript(s: CaptureSettings): string {
  const chains = nftChains(s);
  const lines = [
    `add table ${T}`,
    `add set ${T} ${s.ipset} { type ipv4_addr; }`,
    `add set ${T} ${s.gateIpset} { type ipv4_addr; flags timeout; }`,
  ];
  for (const [name, [decl, ...rules]] of Object.entries(chains)) {
    lines.push(`add chain ${T} ${name} { ${decl} }`, `flush chain ${T} ${name}`);
    for (const rule of rules) lines.push(`add rule ${T} ${name} ${rule}`);
  }
  return `${lines.join('\n')}\n`;
}

/** The chains of `nft list table ip meshlet` output: name -> declaration and rules, trimmed. */
export function parseNftTable(text: string): Map<string, string[]> {
  const chains = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const m = /^chain (\S+) \{$/.exec(line);
    if (m) { chains.set(m[1] as string, current = []); continue; }
    if (line === '}') { current = undefined; continue; }
    if (current && line) current.push(line.replace(/\s+# handle \d+$/, ''));
  }
  return chains;
}

/** True when both chains hold exactly what nftInstallScript writes. */
export function nftIsInstalled(s: CaptureSettings, listed: string): boolean {
  const have = parseNftTable(listed);
  return Object.entries(nftChains(s)).every(([name, want]) => JSON.stringify(have.get(name)) === JSON.stringify(want));
}

/** `nft -f` input that makes the captured set's members `desired`, or undefined when they are. */
export function nftMembersScript(setName: string, current: ReadonlySet<string>, desired: ReadonlySet<string>): { script?: string; added: number; removed: number } {
  const add = [...desired].filter((ip) => !current.has(ip));
  const del = [...current].filter((ip) => !desired.has(ip));
  const lines: string[] = [];
  if (add.length > 0) lines.push(`add element ${T} ${setName} { ${add.join(', ')} }`);
  if (del.length > 0) lines.push(`delete element ${T} ${setName} { ${del.join(', ')} }`);
  return { ...(lines.length > 0 ? { script: `${lines.join('\n')}\n` } : {}), added: add.length, removed: del.length };
}

/**
 * `nft -f` input that vouches for exactly `ips` for `ttlSeconds` more: the set is flushed and
 * refilled in one transaction (re-adding an element does not restart its timeout on every kernel).
 */
export function nftVouchScript(setName: string, ips: readonly string[], ttlSeconds: number): string {
  return `flush set ${T} ${setName}\nadd element ${T} ${setName} { ${ips.map((ip) => `${ip} timeout ${ttlSeconds}s`).join(', ')} }\n`;
}

/** Members of a set from `nft -j list set` output (plain values, or elements with timeouts). */
export function parseNftSetJson(json: string): Set<string> {
  const out = new Set<string>();
  const doc = JSON.parse(json) as { nftables?: Array<{ set?: { elem?: unknown[] } }> };
  for (const item of doc.nftables ?? []) {
    for (const e of item.set?.elem ?? []) {
      if (typeof e === 'string') out.add(e);
      else if (e && typeof e === 'object' && 'elem' in e) {
        const val = (e as { elem: { val?: unknown } }).elem.val;
        if (typeof val === 'string') out.add(val);
      }
    }
  }
  return out;
}
