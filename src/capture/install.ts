// The init helper's effects on the node: the ipset and the nat chain, applied with iptables-restore
// so each change is one atomic transaction.
import { CaptureError, PrerequisiteError } from '../errors.ts';
import { hasNetAdmin, runCommand } from './exec.ts';
import {
  type CaptureSettings, cleanupScript, installScript, isInstalled, parseNatState, type NatState,
} from './rules.ts';

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

async function tool(cmd: string, args: string[], input?: string): Promise<string> {
  let result;
  try {
    result = await runCommand(cmd, args, input);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new PrerequisiteError(`${cmd} is not installed (apt-get install iptables ipset)`);
    }
    throw err;
  }
  if (result.code !== 0) {
    const why = result.stderr.trim() || `exit code ${result.code}`;
    if (/permission denied|operation not permitted/i.test(why)) {
      throw new PrerequisiteError(`${cmd} ${args.join(' ')}: ${why} (CAP_NET_ADMIN is required)`);
    }
    throw new CaptureError(`${cmd} ${args.join(' ')} failed: ${why}${input ? `\ninput was:\n${input}` : ''}`);
  }
  return result.stdout;
}

export async function readNatState(): Promise<NatState> {
  return parseNatState(await tool('iptables-save', ['-t', 'nat']));
}

export async function installCapture(s: CaptureSettings, opts: { dryRun?: boolean } = {}): Promise<InstallResult> {
  if (opts.dryRun) {
    // Without privileges a dry run cannot read the tables; it then prints the script for an empty node.
    const state = hasNetAdmin() ? await readNatState() : parseNatState('');
    return { action: 'dry-run', script: installScript(s, state) };
  }
  assertPrivileged();
  // The set must exist before any rule references it.
  await tool('ipset', ['create', s.ipset, 'hash:ip', 'family', 'inet', '-exist']);
  const before = await readNatState();
  const script = installScript(s, before);
  if (isInstalled(s, before)) return { action: 'unchanged', script };
  await tool('iptables-restore', ['--noflush'], script);
  const after = await readNatState();
  if (!isInstalled(s, after)) {
    throw new CaptureError(`capture rules were applied but iptables-save does not show them in place`);
  }
  return { action: 'installed', script };
}

export async function cleanupCapture(s: CaptureSettings, opts: { dryRun?: boolean } = {}): Promise<string> {
  if (!opts.dryRun) assertPrivileged();
  const state = hasNetAdmin() ? await readNatState() : parseNatState('');
  const script = cleanupScript(s, state) ?? '';
  if (opts.dryRun) return script;
  if (script) await tool('iptables-restore', ['--noflush'], script);
  const sets = await tool('ipset', ['list', '-n']);
  if (sets.split('\n').includes(s.ipset)) await tool('ipset', ['destroy', s.ipset]);
  return script;
}

export async function isCaptureInstalled(s: CaptureSettings): Promise<boolean> {
  return isInstalled(s, await readNatState());
}

export { tool as runCaptureTool };
