// Pure rule generation for the node's capture. Nothing here runs a command: the init helper feeds
// the text to `iptables-restore --noflush`, and `--dry-run` prints exactly the same text.

export interface CaptureSettings {
  /** ipset (hash:ip) whose members are this node's captured pod IPs. */
  ipset: string;
  /** Name of meshlet's own chain in the nat table; PREROUTING jumps to it. */
  chain: string;
  outboundPort: number;
  inboundPlaintextPort: number;
  tunnelPort: number;
}

export const defaultCaptureSettings: CaptureSettings = {
  ipset: 'meshlet-captured',
  chain: 'MESHLET_PREROUTING',
  outboundPort: 15001,
  inboundPlaintextPort: 15006,
  tunnelPort: 15008,
};

/** The body of meshlet's chain, in order. The first match wins (REDIRECT is terminal). */
export function chainRules(s: CaptureSettings): string[] {
  const set = `-m set --match-set ${s.ipset}`;
  return [
    // Rules are written exactly as iptables-save prints them (e.g. `-m tcp` before --dport), so
    // what was installed can be compared with what is in the kernel.
    // Everything a captured pod sends goes to the outbound listener. The agent's own connections
    // leave through OUTPUT, never PREROUTING, so they are not captured again.
    `-A ${s.chain} -p tcp ${set} src -m comment --comment "meshlet: captured pod outbound" -j REDIRECT --to-ports ${s.outboundPort}`,
    // Tunnel traffic addressed to a captured pod's tunnel port lands on the agent's tunnel listener.
    `-A ${s.chain} -p tcp ${set} dst -m tcp --dport ${s.tunnelPort} -m comment --comment "meshlet: tunnel to captured pod" -j REDIRECT --to-ports ${s.tunnelPort}`,
    // Any other TCP to a captured pod is plaintext from outside the mesh: the inbound plaintext port
    // decides (permissive lets it through, strict refuses it).
    `-A ${s.chain} -p tcp ${set} dst -m comment --comment "meshlet: plaintext to captured pod" -j REDIRECT --to-ports ${s.inboundPlaintextPort}`,
  ];
}

/** The jump from PREROUTING into meshlet's chain, as iptables-save prints it. */
export function jumpRule(s: CaptureSettings): string {
  return `-A PREROUTING -j ${s.chain}`;
}

/** What iptables-save says of the nat table that matters to meshlet. */
export interface NatState {
  chains: Set<string>;
  /** Each rule line (starting with -A) in order. */
  rules: string[];
}

/** Parses the nat table out of `iptables-save` output (other tables are ignored). */
export function parseNatState(save: string): NatState {
  const state: NatState = { chains: new Set(), rules: [] };
  let inNat = false;
  for (const raw of save.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('*')) {
      inNat = line === '*nat';
      continue;
    }
    if (!inNat) continue;
    if (line === 'COMMIT') {
      inNat = false;
    } else if (line.startsWith(':')) {
      const name = line.slice(1).split(/\s+/)[0];
      if (name) state.chains.add(name);
    } else if (line.startsWith('-A ')) {
      state.rules.push(line);
    }
  }
  return state;
}

/**
 * iptables-restore --noflush input that installs capture. Declaring meshlet's chain with ':' creates
 * it or flushes it, so its body is replaced in one transaction; the jump is added only when absent.
 * Applied twice, the second run leaves the tables byte-for-byte as the first left them.
 */
export function installScript(s: CaptureSettings, current: NatState): string {
  const lines = ['*nat', `:${s.chain} - [0:0]`, ...chainRules(s)];
  const jumps = current.rules.filter((r) => r === jumpRule(s));
  if (jumps.length === 0) {
    // Inserted first so that capture happens before any DNAT that other components (kube-proxy)
    // add to PREROUTING later.
    lines.push(`-I PREROUTING 1 -j ${s.chain}`);
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** iptables-restore --noflush input that removes what installScript added, and nothing else. */
export function cleanupScript(s: CaptureSettings, current: NatState): string | undefined {
  const lines: string[] = [];
  for (const rule of current.rules) {
    if (rule === jumpRule(s)) lines.push(`-D PREROUTING -j ${s.chain}`);
  }
  if (current.chains.has(s.chain)) lines.push(`-F ${s.chain}`, `-X ${s.chain}`);
  if (lines.length === 0) return undefined;
  return ['*nat', ...lines, 'COMMIT', ''].join('\n');
}

/** True when the tables hold exactly the chain body and the jump that installScript produces. */
export function isInstalled(s: CaptureSettings, current: NatState): boolean {
  if (!current.chains.has(s.chain)) return false;
  const body = current.rules.filter((r) => r.startsWith(`-A ${s.chain} `));
  const want = chainRules(s);
  return body.length === want.length && current.rules.includes(jumpRule(s)) &&
    body.every((r, i) => normalizeRule(r) === normalizeRule(want[i] ?? ''));
}

// iptables-save prints options in its own canonical order and spelling (for example
// `--match-set NAME src` and quoted comments); compare rules by their set of words.
function normalizeRule(rule: string): string {
  return rule.replace(/"/g, '').split(/\s+/).sort().join(' ');
}

/** The ipset restore input that makes `current` members equal `desired`. */
export function ipsetDiff(setName: string, current: ReadonlySet<string>, desired: ReadonlySet<string>): string[] {
  const lines: string[] = [];
  for (const ip of desired) if (!current.has(ip)) lines.push(`add ${setName} ${ip}`);
  for (const ip of current) if (!desired.has(ip)) lines.push(`del ${setName} ${ip}`);
  return lines;
}

/** Members of a set from `ipset save NAME` output. */
export function parseIpsetMembers(setName: string, save: string): Set<string> {
  const members = new Set<string>();
  for (const line of save.split('\n')) {
    const parts = line.trim().split(/\s+/);
    if (parts[0] === 'add' && parts[1] === setName && parts[2]) members.add(parts[2]);
  }
  return members;
}
