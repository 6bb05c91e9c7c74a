// Keeps the captured-pods ipset equal to this node's captured workloads. The rule count never grows
// with pods: membership is the only thing that changes as pods come and go.
import { runCaptureTool } from './install.ts';
import { nftMembersScript, nftTableName, parseNftSetJson } from './nftables.ts';
import { type CaptureSettings, ipsetDiff, parseIpsetMembers } from './rules.ts';

export interface IpsetSync {
  /** Makes the set's members exactly `desired`. Calls are serialized; the last one wins. */
  sync(desired: ReadonlySet<string>): Promise<{ added: number; removed: number }>;
  members(): Promise<Set<string>>;
}

/** The captured set of either backend: an ipset, or the set in meshlet's nftables table. */
export function createMemberSync(s: CaptureSettings): IpsetSync {
  return s.backend === 'nftables' ? createNftSetSync(s.ipset) : createIpsetSync(s.ipset);
}

function createNftSetSync(setName: string): IpsetSync {
  let queue: Promise<unknown> = Promise.resolve();
  async function members(): Promise<Set<string>> {
    return parseNftSetJson(await runCaptureTool('nft', ['-j', 'list', 'set', ...nftTableName.split(' '), setName]));
  }
  async function apply(desired: ReadonlySet<string>): Promise<{ added: number; removed: number }> {
    const { script, added, removed } = nftMembersScript(setName, await members(), desired);
    if (script) await runCaptureTool('nft', ['-f', '-'], script);
    return { added, removed };
  }
  return {
    members,
    sync(desired) {
      const next = queue.then(() => apply(desired));
      queue = next.catch(() => undefined);
      return next;
    },
  };
}

export function createIpsetSync(setName: string): IpsetSync {
  let queue: Promise<unknown> = Promise.resolve();

  async function members(): Promise<Set<string>> {
    return parseIpsetMembers(setName, await runCaptureTool('ipset', ['save', setName]));
  }

  async function apply(desired: ReadonlySet<string>): Promise<{ added: number; removed: number }> {
    const lines = ipsetDiff(setName, await members(), desired);
    if (lines.length > 0) await runCaptureTool('ipset', ['restore', '-exist'], `${lines.join('\n')}\n`);
    return {
      added: lines.filter((l) => l.startsWith('add')).length,
      removed: lines.filter((l) => l.startsWith('del')).length,
    };
  }

  return {
    members,
    sync(desired) {
      const next = queue.then(() => apply(desired));
      queue = next.catch(() => undefined);
      return next;
    },
  };
}
