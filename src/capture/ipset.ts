// Keeps the captured-pods set equal to this node's captured workloads. The rule count never grows
// with pods: membership is the only thing that changes as pods come and go. The set is an ipset, or
// with the nftables backend a set in meshlet's table.
import { runCaptureTool } from './install.ts';
import { nftMembersScript, nftTableName, parseNftSetJson } from './nftables.ts';
import { type CaptureSettings, ipsetDiff, parseIpsetMembers } from './rules.ts';

export interface IpsetSync {
  /** Makes the set's members exactly `desired`. Calls are serialized; the last one wins. */
  sync(desired: ReadonlySet<string>): Promise<{ added: number; removed: number }>;
  members(): Promise<Set<string>>;
}

type Change = { added: number; removed: number };

/** The captured set of either backend. */
export function createMemberSync(s: CaptureSettings): IpsetSync {
  if (s.backend === 'nftables') {
    const members = async () => parseNftSetJson(await runCaptureTool('nft', ['-j', 'list', 'set', ...nftTableName.split(' '), s.ipset]));
    return serialized(members, async (current, desired) => {
      const { script, added, removed } = nftMembersScript(s.ipset, current, desired);
      if (script) await runCaptureTool('nft', ['-f', '-'], script);
      return { added, removed };
    });
  }
  return createIpsetSync(s.ipset);
}

export function createIpsetSync(setName: string): IpsetSync {
  const members = async () => parseIpsetMembers(setName, await runCaptureTool('ipset', ['save', setName]));
  return serialized(members, async (current, desired) => {
    const lines = ipsetDiff(setName, current, desired);
    if (lines.length > 0) await runCaptureTool('ipset', ['restore', '-exist'], `${lines.join('\n')}\n`);
    return { added: lines.filter((l) => l.startsWith('add')).length, removed: lines.filter((l) => l.startsWith('del')).length };
  });
}

/** Read the members, write the difference; one sync at a time, so a later one never races an earlier one. */
function serialized(members: () => Promise<Set<string>>, write: (current: Set<string>, desired: ReadonlySet<string>) => Promise<Change>): IpsetSync {
  let queue: Promise<unknown> = Promise.resolve();
  return {
    members,
    sync(desired) {
      const next = queue.then(async () => write(await members(), desired));
      queue = next.catch(() => undefined);
      return next;
    },
  };
}
