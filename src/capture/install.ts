// The init helper's effects on the node: the two ipsets, the nat chain (capture), the filter chain
// (the probe gate) and the mangle chain (source preservation), applied with iptables-restore so each
// change is one atomic transaction; or, with the nftables backend, one table holding the same,
// applied with `nft -f` (also one transaction). Either way also the policy rule and route that
// deliver the replies of source-preserving connections to the node (`ip rule`, `ip route`).
import { CaptureError, PrerequisiteError } from '../errors.ts';
import { type CommandResult, hasNetAdmin, runCommand, ShellRunner, shellQuote } from './exec.ts';
import {
  captureStatePattern, type CaptureSettings, type CaptureState, chainsExist, cleanupScript, installScript, isInstalled, parseCaptureState,
  SOURCE_ROUTE_TABLE, sourceRouteCommands, sourceRouteShown, sourceRuleCount,
} from './rules.ts';
import { NFT_TABLE, nftInstallScript, nftIsInstalled } from './nftables.ts';

export type InstallResult =
  | { action: 'dry-run'; script: string }
  | { action: 'installed' | 'unchanged'; script: string };

function assertPrivileged(): void {
  if (!hasNetAdmin()) {
    throw new PrerequisiteError(
      'meshlet init needs CAP_NET_ADMIN to change iptables and ipset (run it as root, or give the ' +
      'init container the NET_ADMIN capability)');
  }
}

/**
 * Which shell a capture tool runs in. The probe gate's refresh has one of its own: it is the agent's
 * proof of life, and must never wait behind a slow capture check or set sync.
 */
export type ToolLane = 'default' | 'gate';

let shells: Record<ToolLane, ShellRunner> | undefined;

/**
 * From now on capture tools run through long-lived shells (ShellRunner: no fork of this process
 * per command), one per lane. The agent does this at start; `meshlet init`, which runs a few
 * commands once, spawns them. Returns the function that ends them.
 */
export function runCaptureToolsThroughShell(): () => void {
  const mine = { default: new ShellRunner(), gate: new ShellRunner() };
  shells = mine;
  return () => {
    if (shells === mine) shells = undefined;
    mine.default.close();
    mine.gate.close();
  };
}

/** Runs a capture tool; a missing tool is a PrerequisiteError, the exit code is the caller's to judge. */
async function runTool(cmd: string, args: string[], input?: string, lane: ToolLane = 'default') {
  try {
    return await (shells ? shells[lane].run(cmd, args, input) : runCommand(cmd, args, input));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      const pkg = cmd === 'nft' ? 'nftables' : cmd === 'ip' ? 'iproute2' : 'iptables ipset';
      throw new PrerequisiteError(`${cmd} is not installed (apt-get install ${pkg})`);
    }
    throw err;
  }
}

async function tool(cmd: string, args: string[], input?: string, lane: ToolLane = 'default'): Promise<string> {
  return succeeded(`${cmd} ${args.join(' ')}`, await runTool(cmd, args, input, lane), input);
}

/** A tool's output, or the typed error its failure means (no permission: a PrerequisiteError). */
function succeeded(what: string, result: CommandResult, input?: string): string {
  if (result.code !== 0) {
    const why = result.stderr.trim() || `exit code ${result.code}`;
    if (/permission denied|operation not permitted/i.test(why)) {
      throw new PrerequisiteError(`${what}: ${why} (CAP_NET_ADMIN is required)`);
    }
    throw new CaptureError(`${what} failed: ${why}${input ? `\ninput was:\n${input}` : ''}`);
  }
  return result.stdout;
}

const NO_IPTABLES_SAVE = 'meshlet: no iptables-save';

/**
 * The nat, filter and mangle tables as one iptables-save prints them (the tables that exist), only
 * the lines that concern meshlet's chains (captureStatePattern): grep drops the rest in the shell
 * that runs iptables-save, so a node's kube-proxy rules never reach the agent.
 */
export async function readCaptureState(s: CaptureSettings): Promise<CaptureState> {
  const script = [
    `command -v iptables-save >/dev/null || { echo '${NO_IPTABLES_SAVE}' >&2; exit 1; }`,
    'out=$(iptables-save) || exit $?',
    // grep exits 1 when nothing matches (no table at all): that is an empty state, not a failure.
    `printf '%s\\n' "$out" | grep -E -e ${shellQuote(captureStatePattern(s))}`,
    'exit 0',
  ].join('\n');
  const result = await runTool('sh', ['-c', script]);
  if (result.stderr.includes(NO_IPTABLES_SAVE)) throw new PrerequisiteError('iptables-save is not installed (apt-get install iptables ipset)');
  return parseCaptureState(succeeded('iptables-save', result));
}

/** How many times the policy rule is there, and whether its table holds the local route. */
async function readSourceRoute(): Promise<{ rules: number; route: boolean }> {
  const rules = await tool('ip', ['-4', 'rule', 'show']);
  // An empty table does not exist for `ip route show`, which then fails: no route.
  const routes = await runTool('ip', ['-4', 'route', 'show', 'table', String(SOURCE_ROUTE_TABLE)]);
  return { rules: sourceRuleCount(rules), route: routes.code === 0 && sourceRouteShown(routes.stdout) };
}

/** The policy rule and its route are in place (node mode; a duplicate rule does no harm). */
async function sourceRouteInstalled(): Promise<boolean> {
  const now = await readSourceRoute();
  return now.rules > 0 && now.route;
}

async function installSourceRoute(): Promise<void> {
  const { ruleAdd, routeReplace } = sourceRouteCommands();
  if ((await readSourceRoute()).rules === 0) await tool('ip', ruleAdd);
  await tool('ip', routeReplace);
}

async function cleanupSourceRoute(): Promise<void> {
  const { ruleDel, routeDel } = sourceRouteCommands();
  const now = await readSourceRoute();
  for (let n = now.rules; n > 0; n--) await tool('ip', ruleDel);
  if (now.route) await tool('ip', routeDel);
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

/** The `ipset` commands that create both sets (idempotent: -exist). Not used with nftables (the table holds its sets). */
export function ipsetCreateArgs(s: CaptureSettings): string[][] {
  if (s.mode === 'sidecar') return [];
  return [
    ['create', s.ipset, 'hash:ip', 'family', 'inet', '-exist'],
    ['create', s.gateIpset, 'hash:ip', 'family', 'inet', 'timeout', String(GATE_SET_TIMEOUT_SECONDS), '-exist'],
  ];
}

/** `nft list table ip meshlet`, or undefined when the table does not exist. */
async function listNftTable(): Promise<string | undefined> {
  const result = await runTool('nft', ['list', 'table', ...NFT_TABLE]);
  if (result.code === 0) return result.stdout;
  if (/no such file or directory/i.test(result.stderr)) return undefined;
  throw new CaptureError(`nft list table ${NFT_TABLE.join(' ')} failed: ${result.stderr.trim() || `exit code ${result.code}`}`);
}

async function installNft(s: CaptureSettings, opts: { dryRun?: boolean }): Promise<InstallResult> {
  const script = nftInstallScript(s);
  if (opts.dryRun) return { action: 'dry-run', script };
  assertPrivileged();
  const before = await listNftTable();
  if (before !== undefined && nftIsInstalled(s, before) && await sourceRouteInstalled()) return { action: 'unchanged', script };
  await tool('nft', ['-f', '-'], script);
  await installSourceRoute();
  if (!nftIsInstalled(s, (await listNftTable()) ?? '')) throw new CaptureError(`the ${NFT_TABLE.join(' ')} table was applied but nft does not show it in place`);
  return { action: 'installed', script };
}

export async function installCapture(s: CaptureSettings, opts: { dryRun?: boolean } = {}): Promise<InstallResult> {
  if (s.backend === 'nftables') return installNft(s, opts);
  if (opts.dryRun) {
    // Without privileges a dry run cannot read the tables; it then prints the script for an empty node.
    const state = hasNetAdmin() ? await readCaptureState(s) : parseCaptureState('');
    return { action: 'dry-run', script: installScript(s, state) };
  }
  assertPrivileged();
  // The sets must exist before any rule references them.
  for (const args of ipsetCreateArgs(s)) await tool('ipset', args);
  const before = await readCaptureState(s);
  const script = installScript(s, before);
  const node = s.mode === 'node';
  if (isInstalled(s, before) && (!node || await sourceRouteInstalled())) return { action: 'unchanged', script };
  await tool('iptables-restore', ['--noflush'], script);
  if (node) await installSourceRoute();
  const after = await readCaptureState(s);
  if (!isInstalled(s, after)) {
    throw new CaptureError(`capture rules were applied but iptables-save does not show them in place`);
  }
  return { action: 'installed', script };
}

export async function cleanupCapture(s: CaptureSettings, opts: { dryRun?: boolean } = {}): Promise<string> {
  if (!opts.dryRun) assertPrivileged();
  if (s.backend === 'nftables') {
    // The table holds both sets and both chains: deleting it removes all of meshlet's, nothing else.
    const exists = hasNetAdmin() && (await listNftTable()) !== undefined;
    const script = exists ? `delete table ${NFT_TABLE.join(' ')}\n` : '';
    if (!opts.dryRun && script) await tool('nft', ['-f', '-'], script);
    if (!opts.dryRun) await cleanupSourceRoute();
    return script;
  }
  const state = hasNetAdmin() ? await readCaptureState(s) : parseCaptureState('');
  const script = cleanupScript(s, state) ?? '';
  if (opts.dryRun) return script;
  if (script) await tool('iptables-restore', ['--noflush'], script);
  if (s.mode === 'sidecar') return script;
  await cleanupSourceRoute();
  const sets = (await tool('ipset', ['list', '-n'])).split('\n');
  for (const name of [s.ipset, s.gateIpset]) if (sets.includes(name)) await tool('ipset', ['destroy', name]);
  return script;
}

export type CaptureCheck = 'installed' | 'repaired' | 'absent';

/**
 * What the agent does every few seconds: capture in place stays as it is; capture that `meshlet
 * init` installed and something changed since (kube-proxy put its Service jump first, someone
 * flushed a chain) is repaired; capture that was never installed is reported, not installed (that
 * is the init helper's job, which also creates the sets).
 */
export async function checkCapture(s: CaptureSettings): Promise<CaptureCheck> {
  if (s.backend === 'nftables') {
    const listed = await listNftTable();
    if (listed === undefined) return 'absent';
    if (nftIsInstalled(s, listed) && await sourceRouteInstalled()) return 'installed';
    await tool('nft', ['-f', '-'], nftInstallScript(s));
    await installSourceRoute();
    if (!nftIsInstalled(s, (await listNftTable()) ?? '')) throw new CaptureError('capture was repaired but nft does not show it in place');
    return 'repaired';
  }
  const state = await readCaptureState(s);
  const node = s.mode === 'node';
  if (isInstalled(s, state) && (!node || await sourceRouteInstalled())) return 'installed';
  if (!chainsExist(s, state)) return 'absent';
  await tool('iptables-restore', ['--noflush'], installScript(s, state));
  if (node) await installSourceRoute();
  if (!isInstalled(s, await readCaptureState(s))) throw new CaptureError('capture was repaired but iptables-save does not show it in place');
  return 'repaired';
}

export { tool as runCaptureTool };
