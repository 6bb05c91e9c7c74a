// The two sets the agent writes, for either capture backend (ipsets, or sets in meshlet's nftables
// table): the captured pods, kept equal to this node's captured workloads (the rule count never grows
// with pods: membership is the only thing that changes as pods come and go), and the pods the agent
// vouches for (the probe gate).
import { runCaptureTool } from './install.ts';
import { NFT_TABLE, nftMembersScript, nftVouchScript, parseNftSetJson } from './nftables.ts';
import { type CaptureSettings, ipsetDiff, parseIpsetMembers, vouchLines } from './rules.ts';

export interface IpsetSync {
  /** Makes the set's members exactly `desired`. Calls are serialized; the last one wins. */
  sync(desired: ReadonlySet<string>): Promise<{ added: number; removed: number }>;
  members(): Promise<Set<string>>;
}

type Change = { added: number; removed: number };

/** The captured set of either backend. */
export function createMemberSync(s: CaptureSettings): IpsetSync {
  if (s.backend === 'nftables') {
    const members = async () => parseNftSetJson(await runCaptureTool('nft', ['-j', 'list', 'set', ...NFT_TABLE, s.ipset]));
    return serialized(members, async (current, desired) => {
      const { script, added, removed } = nftMembersScript(s.ipset, current, desired);
      if (script) await runCaptureTool('nft', ['-f', '-'], script);
      return { added, removed };
    });
  }
  return createIpsetSync(s.ipset);
}

/** Vouches for exactly `ips` for `ttlSeconds` more (the probe gate's write), in either backend. */
export function createVouchWriter(s: CaptureSettings): (ips: readonly string[], ttlSeconds: number) => Promise<void> {
  if (s.backend === 'nftables') return async (ips, ttl) => { await runCaptureTool('nft', ['-f', '-'], nftVouchScript(s.gateIpset, ips, ttl), 'gate'); };
  return async (ips, ttl) => { await runCaptureTool('ipset', ['restore', '-exist'], `${vouchLines(s.gateIpset, ips, ttl).join('\n')}\n`, 'gate'); };
}

function createIpsetSync(setName: string): IpsetSync {
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
