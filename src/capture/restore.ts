// What iptables-save says of meshlet's tables, and the iptables-restore input that installs, repairs
// or removes meshlet's chains and nothing else: pure text in, pure text out (install.ts runs it).
import {
  antiSpoofRules, type CaptureSettings, chainRules, gateRules, type IpFamily, ipv6GuardRules, nonTcpRules, SIDECAR_CHAINS, sidecarInboundRules, sidecarOutboundRules, sourceRules,
} from './rules.ts';

/** One chain of meshlet's and the built-in chain that jumps to it first. */
interface ChainHook {
  table: 'nat' | 'filter' | 'mangle' | 'raw';
  parent: 'PREROUTING' | 'OUTPUT' | 'FORWARD';
  chain: string;
  body: string[];
}

function hooks(s: CaptureSettings, family: IpFamily): ChainHook[] {
  if (family === 6) return s.mode === 'node' ? [{ table: 'filter', parent: 'FORWARD', chain: s.ipv6Chain, body: ipv6GuardRules(s) }] : [];
  if (s.mode === 'sidecar') {
    return [
      { table: 'nat', parent: 'PREROUTING', chain: SIDECAR_CHAINS.inbound, body: sidecarInboundRules(s) },
      { table: 'nat', parent: 'OUTPUT', chain: SIDECAR_CHAINS.outbound, body: sidecarOutboundRules(s) },
    ];
  }
  return [
    { table: 'raw', parent: 'PREROUTING', chain: s.antiSpoofChain, body: antiSpoofRules(s) },
    { table: 'nat', parent: 'PREROUTING', chain: s.chain, body: chainRules(s) },
    { table: 'filter', parent: 'OUTPUT', chain: s.gateChain, body: gateRules(s) },
    { table: 'filter', parent: 'FORWARD', chain: s.forwardChain, body: nonTcpRules(s) },
    { table: 'mangle', parent: 'PREROUTING', chain: s.sourceChain, body: sourceRules(s) },
  ];
}

/** The jump from the built-in chain into one of meshlet's, as iptables-save prints it. */
function jumpRule(h: ChainHook): string {
  return `-A ${h.parent} -j ${h.chain}`;
}

/** What iptables-save says of one table. */
export interface TableState {
  chains: Set<string>;
  /** Each rule line (starting with -A) in order, without its counters. */
  rules: string[];
  /** Packets each rule matched (`iptables-save -c`), in the same order; 0 where none were printed. */
  packets: number[];
}

/** The tables meshlet writes to. */
export interface CaptureState {
  nat: TableState;
  filter: TableState;
  mangle: TableState;
  raw: TableState;
}

/**
 * The lines of `iptables-save` output that parseCaptureState needs for these settings, as a POSIX
 * extended regular expression (grep -E; JavaScript reads it the same way): table headers and COMMIT,
 * meshlet's chain declarations, and the rules of meshlet's chains and of the built-in chains that
 * jump to them (all of them, in order: the jump must come first). On a node of a large cluster the
 * nat table holds kube-proxy's tens of thousands of rules, and parsing them all held the agent's
 * event loop for tens of milliseconds every 5 s (bench/README.md, "Measurements behind the code").
 * Filtered, a few lines reach it.
 */
export function captureStatePattern(s: CaptureSettings, family: IpFamily = 4): string {
  const escape = (name: string) => name.replace(/[^A-Za-z0-9_-]/g, (c) => `\\${c}`);
  const all = hooks(s, family);
  const own = [...new Set(all.map((h) => escape(h.chain)))];
  const parents = [...new Set(all.map((h) => h.parent))];
  return `^(\\*|COMMIT|:(${own.join('|')}) |(\\[[0-9]+:[0-9]+\\] )?-A (${[...parents, ...own].join('|')}) )`;
}

/**
 * Parses the nat, filter, mangle and raw tables out of `iptables-save` output, with or without
 * counters (`-c`; other tables are ignored).
 */
export function parseCaptureState(save: string): CaptureState {
  const empty = () => ({ chains: new Set<string>(), rules: [], packets: [] });
  const state: CaptureState = { nat: empty(), filter: empty(), mangle: empty(), raw: empty() };
  let table: TableState | undefined;
  for (const raw of save.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('*')) {
      const name = line.slice(1);
      table = name === 'nat' || name === 'filter' || name === 'mangle' || name === 'raw' ? state[name] : undefined;
      continue;
    }
    if (!table) continue;
    if (line === 'COMMIT') {
      table = undefined;
    } else if (line.startsWith(':')) {
      const name = line.slice(1).split(/\s+/)[0];
      if (name) table.chains.add(name);
    } else {
      const counted = /^\[(\d+):\d+\] (-A .*)$/.exec(line);
      const rule = counted ? counted[2] as string : line;
      if (!rule.startsWith('-A ')) continue;
      table.rules.push(rule);
      table.packets.push(counted ? Number(counted[1]) : 0);
    }
  }
  return state;
}

/**
 * iptables-restore --noflush input that installs capture and the probe gate. Declaring a chain with
 * ':' creates it or flushes it, so its body is replaced in one transaction; a jump is added only
 * when absent. Applied twice, the second run leaves the tables byte-for-byte as the first left them.
 */
export function installScript(s: CaptureSettings, current: CaptureState, family: IpFamily = 4): string {
  const byTable = new Map<string, string[]>();
  for (const h of hooks(s, family)) {
    const lines = byTable.get(h.table) ?? [];
    byTable.set(h.table, lines);
    lines.push(`:${h.chain} - [0:0]`, ...h.body);
    // The jump must be the first rule of its built-in chain: capture before kube-proxy's Service
    // DNAT (KUBE-SERVICES, which kube-proxy itself prepends when it finds its jump missing), and the
    // gate before any ACCEPT in OUTPUT. A jump that is there but no longer first is moved back, in
    // the same transaction, so there is no moment without it.
    if (!jumpIsFirst(h, current)) {
      for (const rule of current[h.table].rules) if (rule === jumpRule(h)) lines.push(`-D ${h.parent} -j ${h.chain}`);
      lines.push(`-I ${h.parent} 1 -j ${h.chain}`);
    }
  }
  return tableBlocks(byTable);
}

/** One `*table ... COMMIT` block per table (one transaction each), in the order first used. */
function tableBlocks(byTable: Map<string, string[]>): string {
  const out: string[] = [];
  for (const [table, lines] of byTable) if (lines.length > 0) out.push(`*${table}`, ...lines, 'COMMIT');
  return out.length === 0 ? '' : [...out, ''].join('\n');
}

/** iptables-restore --noflush input that removes what installScript added, and nothing else. */
export function cleanupScript(s: CaptureSettings, current: CaptureState, family: IpFamily = 4): string | undefined {
  const byTable = new Map<string, string[]>();
  for (const h of hooks(s, family)) {
    const table = current[h.table];
    const own = byTable.get(h.table) ?? [];
    byTable.set(h.table, own);
    for (const rule of table.rules) {
      if (rule === jumpRule(h)) own.push(`-D ${h.parent} -j ${h.chain}`);
    }
    if (table.chains.has(h.chain)) own.push(`-F ${h.chain}`, `-X ${h.chain}`);
  }
  return tableBlocks(byTable) || undefined;
}

/** The jump is the first rule of its built-in chain, and the only jump there. */
function jumpIsFirst(h: ChainHook, current: CaptureState): boolean {
  const parentRules = current[h.table].rules.filter((r) => r.startsWith(`-A ${h.parent} `));
  return parentRules[0] === jumpRule(h) && parentRules.filter((r) => r === jumpRule(h)).length === 1;
}

/**
 * True when the tables hold exactly the chain bodies that installScript produces, each jumped to
 * first. Anything else (a body changed, a jump gone, or another rule put before it) needs a repair.
 */
export function isInstalled(s: CaptureSettings, current: CaptureState, family: IpFamily = 4): boolean {
  return hooks(s, family).every((h) => {
    const table = current[h.table];
    if (!table.chains.has(h.chain)) return false;
    const body = table.rules.filter((r) => r.startsWith(`-A ${h.chain} `));
    return body.length === h.body.length && jumpIsFirst(h, current) &&
      body.every((r, i) => normalizeRule(r) === normalizeRule(h.body[i] ?? ''));
  });
}

/** Whether meshlet's chains exist at all (`meshlet init` ran on this node), installed right or not. */
export function chainsExist(s: CaptureSettings, current: CaptureState, family: IpFamily = 4): boolean {
  // Any of them: a chain that a newer meshlet added is repaired in, not a reason to stop serving.
  return hooks(s, family).some((h) => current[h.table].chains.has(h.chain));
}

// iptables-save prints options in its own canonical order and spelling (for example
// `--match-set NAME src` and quoted comments); compare rules by their set of words.
function normalizeRule(rule: string): string {
  return rule.replace(/"/g, '').split(/\s+/).sort().join(' ');
}

/** Packets the anti-spoofing rule dropped (its counter), or undefined when it is not installed. */
export function spoofedDrops(s: CaptureSettings, current: CaptureState): number | undefined {
  const rule = normalizeRule(antiSpoofRules(s)[0] as string);
  const i = current.raw.rules.findIndex((r) => normalizeRule(r) === rule);
  return i < 0 ? undefined : current.raw.packets[i];
}
