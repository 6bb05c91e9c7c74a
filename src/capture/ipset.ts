// The sets the agent writes, for either capture backend (ipsets, or sets in meshlet's nftables
// tables): the captured pods, kept equal to this node's captured workloads (the rule count never grows
// with pods: membership is the only thing that changes as pods come and go), the destinations in the
// mesh (the only ones a captured pod's connections are redirected for, with the pod ranges), the captured pods' IPv6
// addresses (the IPv6 guard), and the pods the agent vouches for (the probe gate).
import type { CaptureTools } from './tools.ts';
import { NFT_TABLE, NFT_TABLE6, nftMembersScript, nftVouchScript, parseNftSetJson } from './nftables.ts';
import type { CaptureSettings } from './rules.ts';

export interface IpsetSync {
  /** Makes the set's members exactly `desired`. Calls are serialized; the last one wins. */
  sync(desired: ReadonlySet<string>): Promise<{ added: number; removed: number }>;
  members(): Promise<Set<string>>;
}

type Change = { added: number; removed: number };

/** Which of the member sets: this node's captured pods, the destinations in the mesh, the pod ranges (address slices only), its STRICT pods (non-TCP dropped), or the captured pods' IPv6 addresses (the IPv6 guard). */
export type MemberSet = 'captured' | 'destinations' | 'podRanges' | 'strict' | 'captured6';

/** A member set of either backend. */
export function createMemberSync(tools: CaptureTools, s: CaptureSettings, which: MemberSet = 'captured'): IpsetSync {
  const setName = { captured: s.ipset, destinations: s.destinationsIpset, podRanges: s.podRangesIpset, strict: s.strictIpset, captured6: s.ipset6 }[which];
  if (s.backend === 'nftables') {
    const table = which === 'captured6' ? NFT_TABLE6 : NFT_TABLE;
    const members = async () => parseNftSetJson(await tools.tool('nft', ['-j', 'list', 'set', ...table, setName]));
    return serialized(members, async (current, desired) => {
      const { script, added, removed } = nftMembersScript(table, setName, current, desired);
      if (script) await tools.tool('nft', ['-f', '-'], script);
      return { added, removed };
    });
  }
  return createIpsetSync(tools, setName);
}

/** Vouches for exactly `ips` for `ttlSeconds` more (the probe gate's write), in either backend. */
export function createVouchWriter(tools: CaptureTools, s: CaptureSettings): (ips: readonly string[], ttlSeconds: number) => Promise<void> {
  if (s.backend === 'nftables') return async (ips, ttl) => { await tools.tool('nft', ['-f', '-'], nftVouchScript(s.gateIpset, ips, ttl), 'gate'); };
  return async (ips, ttl) => { await tools.tool('ipset', ['restore', '-exist'], `${vouchLines(s.gateIpset, ips, ttl).join('\n')}\n`, 'gate'); };
}

function createIpsetSync(tools: CaptureTools, setName: string): IpsetSync {
  const members = async () => parseIpsetMembers(setName, await tools.tool('ipset', ['save', setName]));
  return serialized(members, async (current, desired) => {
    const lines = ipsetDiff(setName, current, desired);
    if (lines.length > 0) await tools.tool('ipset', ['restore', '-exist'], `${lines.join('\n')}\n`);
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

/** ipset restore input (run with -exist) that vouches for `ips` for `ttlSeconds` more seconds. */
export function vouchLines(setName: string, ips: Iterable<string>, ttlSeconds: number): string[] {
  return [...ips].map((ip) => `add ${setName} ${ip} timeout ${ttlSeconds}`);
}
