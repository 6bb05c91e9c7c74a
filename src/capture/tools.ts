// The capture tools (iptables, ipset, nft, ip) as one object that whoever needs them builds and
// passes in: `meshlet init` runs a few commands once and spawns each; the agent runs them through
// long-lived shells (exec.ts ShellRunner: no fork of a large process per command).
import { CaptureError, PrerequisiteError } from '../errors.ts';
import { type CommandResult, runCommand, ShellRunner } from './exec.ts';

/**
 * Which shell a capture tool runs in. The probe gate's refresh has one of its own: it is the agent's
 * proof of life, and must never wait behind a slow capture check or set sync.
 */
export type ToolLane = 'default' | 'gate';

export class CaptureTools {
  readonly #shells: Record<ToolLane, ShellRunner> | undefined;

  private constructor(shells: Record<ToolLane, ShellRunner> | undefined) {
    this.#shells = shells;
  }

  /** Each command a process of its own (meshlet init). */
  static spawned(): CaptureTools {
    return new CaptureTools(undefined);
  }

  /** Commands through one long-lived shell per lane (the agent); close() ends them. */
  static throughShells(): CaptureTools {
    return new CaptureTools({ default: new ShellRunner(), gate: new ShellRunner() });
  }

  /** Runs a tool; a missing tool is a PrerequisiteError, the exit code is the caller's to judge. */
  async run(cmd: string, args: string[], input?: string, lane: ToolLane = 'default'): Promise<CommandResult> {
    try {
      return await (this.#shells ? this.#shells[lane].run(cmd, args, input) : runCommand(cmd, args, input));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        const pkg = cmd === 'nft' ? 'nftables' : cmd === 'ip' ? 'iproute2' : 'iptables ipset';
        throw new PrerequisiteError(`${cmd} is not installed (apt-get install ${pkg})`);
      }
      throw err;
    }
  }

  /** A tool's output, or the typed error its failure means (no permission: a PrerequisiteError). */
  async tool(cmd: string, args: string[], input?: string, lane: ToolLane = 'default'): Promise<string> {
    return succeeded(`${cmd} ${args.join(' ')}`, await this.run(cmd, args, input, lane), input);
  }

  close(): void {
    this.#shells?.default.close();
    this.#shells?.gate.close();
  }
}

export function succeeded(what: string, result: CommandResult, input?: string): string {
  if (result.code !== 0) {
    const why = result.stderr.trim() || `exit code ${result.code}`;
    if (/permission denied|operation not permitted/i.test(why)) {
      throw new PrerequisiteError(`${what}: ${why} (CAP_NET_ADMIN is required)`);
    }
    throw new CaptureError(`${what} failed: ${why}${input ? `\ninput was:\n${input}` : ''}`);
  }
  return result.stdout;
}
