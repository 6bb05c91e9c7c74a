// The init helper's effects on the node: the ipsets, the nat chain (capture), the filter chain
// (the probe gate) and the mangle chain (source preservation), applied with iptables-restore so each
// change is one atomic transaction, and the IPv6 guard's chain, applied with ip6tables-restore; or,
// with the nftables backend, meshlet's ip and ip6 tables holding the same, applied with `nft -f`
// (also one transaction). Either way also the policy rule and route that deliver the replies of
// source-preserving connections to the node (`ip rule`, `ip route`).
import { existsSync } from 'node:fs';
import { BRIDGE_TABLE } from './bridge-ports.ts';
import { CaptureError, PrerequisiteError } from '../errors.ts';
import { type CommandResult, hasNetAdmin, shellQuote } from './exec.ts';
import { type CaptureTools, succeeded } from './tools.ts';
import { type CaptureSettings, type IpFamily, SOURCE_ROUTE_TABLE, sourceRouteCommands, sourceRouteShown, sourceRuleCount } from './rules.ts';
import { captureStatePattern, type CaptureState, chainsExist, cleanupScript, installScript, isInstalled, parseCaptureState, spoofedDrops } from './restore.ts';
import { iptablesTool } from './iptables-mode.ts';
import { NFT_TABLE, NFT_TABLE6, nftInstallScript, nftIsInstalled, nftSpoofedDrops } from './nftables.ts';

/** `script`: the iptables-restore (or nft -f) input; `script6`: the ip6tables-restore input, if any. */
export type InstallResult = { action: 'dry-run' | 'installed' | 'unchanged'; script: string; script6?: string };

/**
 * Whether this network namespace has IPv6 at all. A kernel booted with ipv6.disable=1 has no
 * /proc/sys/net/ipv6 and no ip6tables tables: there is no IPv6 to guard, and none is attempted.
 */
export function ipv6Enabled(): boolean {
  return existsSync('/proc/sys/net/ipv6');
}

/** The iptables families meshlet writes: IPv4 capture, and in node mode the IPv6 guard. */
export function captureFamilies(s: CaptureSettings): IpFamily[] {
  return s.mode === 'node' && ipv6Enabled() ? [4, 6] : [4];
}


/**
 * What `--dry-run` prints: the iptables-restore input, then (when there is one) a comment line and
 * the ip6tables-restore input.
 */
export function dryRunText(s: CaptureSettings, script: string, script6: string | undefined): string {
  return script6 ? `${script}# ${iptablesTool(s, 6, 'restore')} --noflush\n${script6}` : script;
}

function assertPrivileged(): void {
  if (!hasNetAdmin()) {
    throw new PrerequisiteError(
      'meshlet init needs CAP_NET_ADMIN to change iptables and ipset (run it as root, or give the ' +
      'init container the NET_ADMIN capability)');
  }
}

const NO_SAVE_TOOL = 'meshlet: no save tool';

/**
 * The nat, filter and mangle tables as iptables-save (ip6tables-save) prints them (the tables that
 * exist), only the lines that concern meshlet's chains (captureStatePattern): grep drops the rest in
 * the shell that runs the save tool, so a node's kube-proxy rules never reach the agent.
 */
export async function readCaptureState(tools: CaptureTools, s: CaptureSettings, family: IpFamily = 4): Promise<CaptureState> {
  const save = iptablesTool(s, family, 'save');
  const script = [
    `command -v ${save} >/dev/null || { echo '${NO_SAVE_TOOL}' >&2; exit 1; }`,
    // With counters (-c): the anti-spoofing rule's is the agent's count of spoofed packets dropped.
    `out=$(${save} -c) || exit $?`,
    // grep exits 1 when nothing matches (no table at all): that is an empty state, not a failure.
    `printf '%s\\n' "$out" | grep -E -e ${shellQuote(captureStatePattern(s, family))}`,
    'exit 0',
  ].join('\n');
  const result = await tools.run('sh', ['-c', script]);
  if (result.stderr.includes(NO_SAVE_TOOL)) throw new PrerequisiteError(`${save} is not installed (apt-get install iptables ipset)`);
  return parseCaptureState(succeeded(save, result));
}

/** How many times the policy rule is there, and whether its table holds the local route. */
async function readSourceRoute(tools: CaptureTools): Promise<{ rules: number; route: boolean }> {
  const rules = await tools.tool('ip', ['-4', 'rule', 'show']);
  // An empty table does not exist for `ip route show`, which then fails: no route.
  const routes = await tools.run('ip', ['-4', 'route', 'show', 'table', String(SOURCE_ROUTE_TABLE)]);
  return { rules: sourceRuleCount(rules), route: routes.code === 0 && sourceRouteShown(routes.stdout) };
}

/** The policy rule and its route are in place (node mode; a duplicate rule does no harm). */
async function sourceRouteInstalled(tools: CaptureTools): Promise<boolean> {
  const now = await readSourceRoute(tools);
  return now.rules > 0 && now.route;
}

async function installSourceRoute(tools: CaptureTools): Promise<void> {
  const { ruleAdd, routeReplace } = sourceRouteCommands();
  if ((await readSourceRoute(tools)).rules === 0) await tools.tool('ip', ruleAdd);
  await tools.tool('ip', routeReplace);
}

async function cleanupSourceRoute(tools: CaptureTools): Promise<void> {
  const { ruleDel, routeDel } = sourceRouteCommands();
  const now = await readSourceRoute(tools);
  for (let n = now.rules; n > 0; n--) await tools.tool('ip', ruleDel);
  if (now.route) await tools.tool('ip', routeDel);
}

/** The policy rule and route as shell commands, for --dry-run. */
export function sourceRouteText(): string {
  const { ruleAdd, routeReplace } = sourceRouteCommands();
  return `\`ip ${ruleAdd.join(' ')}\` and \`ip ${routeReplace.join(' ')}\``;
}

/**
 * The default timeout the vouched set is created with. Every entry is added with its own timeout,
 * so this value never matters; it is fixed so `create -exist` matches a set an earlier run made.
 */
const GATE_SET_TIMEOUT_SECONDS = 5;

/**
 * The `ipset` commands that create the sets (idempotent: -exist): the captured pods, the
 * destinations in the mesh, the pod ranges, the STRICT pods, the vouched pods, and the captured pods' IPv6
 * addresses. Not used with nftables (its tables hold their sets).
 */
export function ipsetCreateArgs(s: CaptureSettings, families: readonly IpFamily[] = captureFamilies(s)): string[][] {
  if (s.mode === 'sidecar') return [];
  return [
    ['create', s.ipset, 'hash:ip', 'family', 'inet', '-exist'],
    ['create', s.destinationsIpset, 'hash:ip', 'family', 'inet', '-exist'],
    ['create', s.strictIpset, 'hash:ip', 'family', 'inet', '-exist'],
    ['create', s.podRangesIpset, 'hash:net', 'family', 'inet', '-exist'],
    ['create', s.gateIpset, 'hash:ip', 'family', 'inet', 'timeout', String(GATE_SET_TIMEOUT_SECONDS), '-exist'],
    ...(families.includes(6) ? [['create', s.ipset6, 'hash:ip', 'family', 'inet6', '-exist']] : []),
  ];
}

/** `nft list table FAMILY meshlet`, or undefined when the table does not exist. */
async function listNftTable(tools: CaptureTools, table: readonly string[]): Promise<string | undefined> {
  const result = await tools.run('nft', ['list', 'table', ...table]);
  if (result.code === 0) return result.stdout;
  if (/no such file or directory/i.test(result.stderr)) return undefined;
  throw new CaptureError(`nft list table ${table.join(' ')} failed: ${result.stderr.trim() || `exit code ${result.code}`}`);
}

/** meshlet's nftables tables as nft lists them (undefined: absent), for nftIsInstalled. */
async function listNftTables(tools: CaptureTools, s: CaptureSettings): Promise<{ ip: string | undefined; ip6: string | undefined; families: IpFamily[] }> {
  const families = captureFamilies(s);
  return { ip: await listNftTable(tools, NFT_TABLE), ip6: families.includes(6) ? await listNftTable(tools, NFT_TABLE6) : undefined, families };
}

async function installNft(tools: CaptureTools, s: CaptureSettings, opts: { dryRun?: boolean }): Promise<InstallResult> {
  const families = captureFamilies(s);
  const script = nftInstallScript(s, families);
  if (opts.dryRun) return { action: 'dry-run', script };
  assertPrivileged();
  if (nftIsInstalled(s, await listNftTables(tools, s)) && await sourceRouteInstalled(tools)) return { action: 'unchanged', script };
  await tools.tool('nft', ['-f', '-'], script);
  await installSourceRoute(tools);
  if (!nftIsInstalled(s, await listNftTables(tools, s))) throw new CaptureError('meshlet\'s nftables tables were applied but nft does not show them in place');
  return { action: 'installed', script };
}

export async function installCapture(tools: CaptureTools, s: CaptureSettings, opts: { dryRun?: boolean } = {}): Promise<InstallResult> {
  if (s.backend === 'nftables') return installNft(tools, s, opts);
  const families = captureFamilies(s);
  const scripts = new Map<IpFamily, string>();
  if (opts.dryRun) {
    // Without privileges a dry run cannot read the tables; it then prints the scripts for an empty node.
    for (const f of families) scripts.set(f, installScript(s, hasNetAdmin() ? await readCaptureState(tools, s, f) : parseCaptureState(''), f));
    return { action: 'dry-run', ...withScripts(scripts) };
  }
  assertPrivileged();
  // The sets must exist before any rule references them.
  for (const args of ipsetCreateArgs(s, families)) await tools.tool('ipset', args);
  const node = s.mode === 'node';
  let changed = false;
  for (const f of families) {
    const before = await readCaptureState(tools, s, f);
    scripts.set(f, installScript(s, before, f));
    if (isInstalled(s, before, f)) continue;
    await tools.tool(iptablesTool(s, f, 'restore'), ['--noflush'], scripts.get(f));
    if (!isInstalled(s, await readCaptureState(tools, s, f), f)) throw new CaptureError(`capture rules were applied but ${iptablesTool(s, f, 'save')} does not show them in place`);
    changed = true;
  }
  if (node && !(await sourceRouteInstalled(tools))) {
    await installSourceRoute(tools);
    changed = true;
  }
  return { action: changed ? 'installed' : 'unchanged', ...withScripts(scripts) };
}

function withScripts(scripts: ReadonlyMap<IpFamily, string>): { script: string; script6?: string } {
  const script6 = scripts.get(6);
  return { script: scripts.get(4) ?? '', ...(script6 !== undefined ? { script6 } : {}) };
}

export async function cleanupCapture(tools: CaptureTools, s: CaptureSettings, opts: { dryRun?: boolean } = {}): Promise<string> {
  if (!opts.dryRun) assertPrivileged();
  if (s.mode === 'node' && !opts.dryRun) await cleanupBridgeTable(tools);
  if (s.backend === 'nftables') {
    // The tables hold the sets and the chains: deleting them removes all of meshlet's, nothing else.
    let script = '';
    if (hasNetAdmin()) {
      const listed = await listNftTables(tools, s);
      if (listed.ip !== undefined) script += `delete table ${NFT_TABLE.join(' ')}\n`;
      if (listed.ip6 !== undefined) script += `delete table ${NFT_TABLE6.join(' ')}\n`;
    }
    if (!opts.dryRun && script) await tools.tool('nft', ['-f', '-'], script);
    if (!opts.dryRun) await cleanupSourceRoute(tools);
    return script;
  }
  const families = captureFamilies(s);
  const scripts = new Map<IpFamily, string>();
  for (const f of families) scripts.set(f, cleanupScript(s, hasNetAdmin() ? await readCaptureState(tools, s, f) : parseCaptureState(''), f) ?? '');
  const text = dryRunText(s, scripts.get(4) ?? '', scripts.get(6));
  if (opts.dryRun) return text;
  for (const [f, script] of scripts) if (script) await tools.tool(iptablesTool(s, f, 'restore'), ['--noflush'], script);
  if (s.mode === 'sidecar') return text;
  await cleanupSourceRoute(tools);
  const sets = (await tools.tool('ipset', ['list', '-n'])).split('\n');
  for (const name of [s.ipset, s.destinationsIpset, s.podRangesIpset, s.strictIpset, s.gateIpset, s.ipset6]) if (sets.includes(name)) await tools.tool('ipset', ['destroy', name]);
  return text;
}

/** The agent's bridge table (capture/bridge-ports.ts), on nodes where it made one. */
async function cleanupBridgeTable(tools: CaptureTools): Promise<void> {
  let listed: CommandResult;
  try {
    listed = await tools.run('nft', ['list', 'table', ...BRIDGE_TABLE]);
  } catch (err) {
    if (err instanceof PrerequisiteError) return; // no nft on this node: the agent made no table
    throw err;
  }
  if (listed.code === 0) await tools.tool('nft', ['delete', 'table', ...BRIDGE_TABLE]);
}

/** What the check found, and the anti-spoofing rule's count of dropped packets when it read one. */
export type CaptureCheck = { state: 'installed' | 'repaired' | 'absent'; spoofedDrops?: number };

/**
 * What the agent does every few seconds: capture in place stays as it is; capture that `meshlet
 * init` installed and something changed since (kube-proxy put its Service jump first, someone
 * flushed a chain) is repaired; capture that was never installed is reported, not installed (that
 * is the init helper's job, which also creates the sets).
 */
export async function checkCapture(tools: CaptureTools, s: CaptureSettings): Promise<CaptureCheck> {
  if (s.backend === 'nftables') {
    const listed = await listNftTables(tools, s);
    const counted = (drops: number | undefined) => (drops === undefined ? {} : { spoofedDrops: drops });
    if (listed.ip === undefined || (listed.families.includes(6) && listed.ip6 === undefined)) return { state: 'absent' };
    if (nftIsInstalled(s, listed) && await sourceRouteInstalled(tools)) return { state: 'installed', ...counted(nftSpoofedDrops(s, listed.ip)) };
    await tools.tool('nft', ['-f', '-'], nftInstallScript(s, listed.families));
    await installSourceRoute(tools);
    if (!nftIsInstalled(s, await listNftTables(tools, s))) throw new CaptureError('capture was repaired but nft does not show it in place');
    return { state: 'repaired', ...counted(nftSpoofedDrops(s, listed.ip)) };
  }
  const families = captureFamilies(s);
  const states = new Map<IpFamily, CaptureState>();
  for (const f of families) states.set(f, await readCaptureState(tools, s, f));
  const state = (f: IpFamily) => states.get(f) as CaptureState;
  const node = s.mode === 'node';
  const drops = node ? spoofedDrops(s, state(4)) : undefined;
  const counted = drops === undefined ? {} : { spoofedDrops: drops };
  if (families.every((f) => isInstalled(s, state(f), f)) && (!node || await sourceRouteInstalled(tools))) return { state: 'installed', ...counted };
  if (!families.every((f) => chainsExist(s, state(f), f))) return { state: 'absent' };
  for (const f of families) {
    if (isInstalled(s, state(f), f)) continue;
    await tools.tool(iptablesTool(s, f, 'restore'), ['--noflush'], installScript(s, state(f), f));
    if (!isInstalled(s, await readCaptureState(tools, s, f), f)) throw new CaptureError(`capture was repaired but ${iptablesTool(s, f, 'save')} does not show it in place`);
  }
  if (node) await installSourceRoute(tools);
  return { state: 'repaired', ...counted };
}

