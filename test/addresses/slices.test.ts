// The address table's slices: what an entry holds, how few writes a change costs, and what a
// malformed slice from the API turns into.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type AddressEntry, entryOf, planSlices, readSlice, type SliceState, type SliceWrite, sliceObject } from '../../src/addresses/slices.ts';

const entry = (i: number, over: Partial<AddressEntry> = {}): AddressEntry => ({
  ip: `10.1.${Math.floor(i / 250)}.${(i % 250) + 1}`, namespace: 'shop', serviceAccount: `sa${i % 7}`, node: `n${i % 10}`, captured: true, workload: `app${i % 20}`, ...over,
});
const table = (entries: AddressEntry[]) => new Map(entries.map((e) => [e.ip, e]));
const namer = () => { let n = 0; return () => `s${++n}`; };
/** Applies writes to a list of slices the way the API would (resourceVersions left out). */
function apply(slices: SliceState[], writes: SliceWrite[]): SliceState[] {
  const byName = new Map(slices.map((s) => [s.name, s]));
  for (const w of writes) {
    if (w.op === 'delete') byName.delete(w.name);
    else byName.set(w.name, { name: w.name, entries: w.entries });
  }
  return [...byName.values()];
}
const ipsOf = (slices: SliceState[]) => slices.flatMap((s) => s.entries.map((e) => e.ip)).sort();

describe('address slices', () => {
  it('holds only what a remote agent needs: addresses, namespace, service account, node, captured, workload', () => {
    const e = entryOf({ name: 'web-1', namespace: 'shop', serviceAccount: 'web', ip: '10.1.0.5', ipv6: 'fd00::5', node: 'n1', captured: true,
      spiffeId: 'spiffe://cluster.local/ns/shop/sa/web', labels: { app: 'web', team: 'a' }, workload: 'web' });
    assert.deepEqual(e, { ip: '10.1.0.5', ipv6: 'fd00::5', namespace: 'shop', serviceAccount: 'web', node: 'n1', captured: true, workload: 'web' });
    const o = sliceObject('meshlet-system', 's1', [e]);
    assert.equal(o.kind, 'MeshAddressSlice');
    assert.deepEqual(readSlice(o), { slice: { name: 's1', entries: [e] }, problems: [] });
  });

  it('packs a table into slices of at most 100 entries', () => {
    const writes = planSlices([], table(Array.from({ length: 250 }, (_, i) => entry(i))), namer());
    assert.deepEqual(writes.map((w) => [w.op, w.name, w.op === 'delete' ? 0 : w.entries.length]), [['create', 's1', 100], ['create', 's2', 100], ['create', 's3', 50]]);
  });

  it('writes nothing when the slices already hold the table, whoever wrote them', () => {
    const all = Array.from({ length: 250 }, (_, i) => entry(i));
    const slices = apply([], planSlices([], table(all), namer()));
    // A controller that took over plans against the same slices, in any order of the table.
    assert.deepEqual(planSlices(slices, table([...all].reverse()), namer()), []);
  });

  it('rewrites only the slice a changed, removed or added pod touches', () => {
    const all = Array.from({ length: 250 }, (_, i) => entry(i));
    let slices = apply([], planSlices([], table(all), namer()));
    const where = (ip: string) => slices.find((s) => s.entries.some((e) => e.ip === ip))!.name;
    // One pod's entry changes (released from capture): its slice only, in place.
    const changed = { ...all[42]!, captured: false };
    let writes = planSlices(slices, table(all.map((e, i) => (i === 42 ? changed : e))), namer());
    assert.deepEqual(writes.map((w) => [w.op, w.name]), [['update', where(changed.ip)]]);
    // One pod goes, one comes: the new one fills the slice being written anyway.
    const next = [...all.filter((_, i) => i !== 120), entry(400)];
    writes = planSlices(slices, table(next), namer());
    assert.deepEqual(writes.map((w) => [w.op, w.name]), [['update', where(all[120]!.ip)]]);
    slices = apply(slices, writes);
    assert.deepEqual(ipsOf(slices), next.map((e) => e.ip).sort());
  });

  it('fills slices with room before creating one, and deletes a slice left empty', () => {
    const all = Array.from({ length: 150 }, (_, i) => entry(i));
    let slices = apply([], planSlices([], table(all), namer()));
    // 30 new pods fit into the half-empty slice: no new object.
    const more = [...all, ...Array.from({ length: 30 }, (_, i) => entry(500 + i))];
    let writes = planSlices(slices, table(more), namer());
    assert.deepEqual(writes.map((w) => w.op), ['update']);
    slices = apply(slices, writes);
    // Every pod of the second slice goes: that slice is deleted, the other untouched.
    const second = new Set(slices[1]!.entries.map((e) => e.ip));
    writes = planSlices(slices, table(more.filter((e) => !second.has(e.ip))), namer());
    assert.deepEqual(writes.map((w) => [w.op, w.name]), [['delete', slices[1]!.name]]);
  });

  it('drops a duplicate entry left in a second slice by an interrupted round', () => {
    const a = entry(1);
    const b = entry(2);
    const slices: SliceState[] = [{ name: 'x', resourceVersion: '7', entries: [a, b] }, { name: 'y', resourceVersion: '8', entries: [b] }];
    assert.deepEqual(planSlices(slices, table([a, b]), namer()), [{ op: 'delete', name: 'y', resourceVersion: '8' }]);
  });

  it('reads a malformed slice from the API without trusting it: bad entries are left out and named', () => {
    const good = entry(3);
    const { slice, problems } = readSlice({
      metadata: { name: 'evil', resourceVersion: '9' },
      entries: [good, { ...good, ip: 'not-an-ip' }, { ...good, captured: 'yes' }, { ...good, serviceAccount: '' }, null, 'text', { ...good, ipv6: '10.0.0.1' }],
    });
    assert.deepEqual(slice, { name: 'evil', resourceVersion: '9', entries: [good] });
    assert.deepEqual(problems, [1, 2, 3, 4, 5, 6].map((i) => `evil: entry ${i} is malformed`));
    assert.deepEqual(readSlice({ metadata: { name: 'no-list' }, entries: { a: 1 } }).problems, ['no-list: entries is not a list']);
    assert.deepEqual(readSlice(undefined).slice, { name: '', entries: [] });
  });
});
