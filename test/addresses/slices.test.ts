// The address table's slices: what an entry holds, how few writes a change costs, and what a
// malformed slice from the API turns into.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type AddressEntry, entryOf, planSlices, readSlice, type SliceState, type SliceWrite, sliceName, sliceObject } from '../../src/addresses/slices.ts';

const entry = (i: number, over: Partial<AddressEntry> = {}): AddressEntry => ({
  ip: `10.1.${Math.floor(i / 250)}.${(i % 250) + 1}`, namespace: 'shop', serviceAccount: `sa${i % 7}`, node: `n${i % 10}`, captured: true, workload: `app${i % 20}`, ...over,
});
const table = (entries: AddressEntry[]) => new Map(entries.map((e) => [e.ip, e]));
const namer = () => { let n = 0; return (node: string) => `${node}-s${++n}`; };
/** Applies writes to a list of slices the way the API would (resourceVersions left out). */
function apply(slices: SliceState[], writes: SliceWrite[]): SliceState[] {
  const byName = new Map(slices.map((s) => [s.name, s]));
  for (const w of writes) {
    if (w.op === 'delete') byName.delete(w.name);
    else byName.set(w.name, { name: w.name, node: w.node, entries: w.entries });
  }
  return [...byName.values()];
}
const ipsOf = (slices: SliceState[]) => slices.flatMap((s) => s.entries.map((e) => e.ip)).sort();

describe('address slices', () => {
  it('holds only what a remote agent needs: addresses, namespace, service account, captured, workload; the node once', () => {
    const e = entryOf({ name: 'web-1', namespace: 'shop', serviceAccount: 'web', ip: '10.1.0.5', ipv6: 'fd00::5', node: 'n1', captured: true,
      spiffeId: 'spiffe://cluster.local/ns/shop/sa/web', labels: { app: 'web', team: 'a' }, workload: 'web' });
    assert.deepEqual(e, { ip: '10.1.0.5', ipv6: 'fd00::5', namespace: 'shop', serviceAccount: 'web', node: 'n1', captured: true, workload: 'web' });
    const o = sliceObject('meshlet-system', 's1', 'n1', [e]);
    assert.equal(o.kind, 'MeshAddressSlice');
    assert.equal(o.node, 'n1');
    assert.deepEqual(o.entries, [{ ip: '10.1.0.5', ipv6: 'fd00::5', namespace: 'shop', serviceAccount: 'web', captured: true, workload: 'web' }]);
    assert.deepEqual(readSlice(o), { slice: { name: 's1', node: 'n1', entries: [e] }, problems: [] });
  });

  it('puts each node\'s pods in that node\'s slices, at most 100 to a slice', () => {
    const writes = planSlices([], table(Array.from({ length: 250 }, (_, i) => entry(i))), namer());
    assert.deepEqual(writes.map((w) => [w.op, w.op === 'delete' ? '' : w.node, w.op === 'delete' ? 0 : w.entries.length]),
      Array.from({ length: 10 }, (_, i) => ['create', `n${i}`, 25]));
    for (const w of writes) if (w.op !== 'delete') assert.ok(w.entries.every((e) => e.node === w.node));
    const crowded = planSlices([], table(Array.from({ length: 250 }, (_, i) => entry(i, { node: 'big' }))), namer());
    assert.deepEqual(crowded.map((w) => (w.op === 'delete' ? 0 : w.entries.length)), [100, 100, 50]);
  });

  it('writes nothing when the slices already hold the table, whoever wrote them', () => {
    const all = Array.from({ length: 250 }, (_, i) => entry(i));
    const slices = apply([], planSlices([], table(all), namer()));
    // A controller that took over plans against the same slices, in any order of the table.
    assert.deepEqual(planSlices(slices, table([...all].reverse()), namer()), []);
  });

  it('rewrites only the slice of the node a changed, removed or added pod is on', () => {
    const all = Array.from({ length: 250 }, (_, i) => entry(i));
    let slices = apply([], planSlices([], table(all), namer()));
    const where = (ip: string) => slices.find((s) => s.entries.some((e) => e.ip === ip))!.name;
    // One pod's entry changes (released from capture): its node's slice only, in place.
    const changed = { ...all[42]!, captured: false };
    let writes = planSlices(slices, table(all.map((e, i) => (i === 42 ? changed : e))), namer());
    assert.deepEqual(writes.map((w) => [w.op, w.name]), [['update', where(changed.ip)]]);
    // One pod goes and one comes on the same node: one write.
    const next = [...all.filter((_, i) => i !== 120), entry(400)];
    writes = planSlices(slices, table(next), namer());
    assert.deepEqual(writes.map((w) => [w.op, w.name]), [['update', where(all[120]!.ip)]]);
    slices = apply(slices, writes);
    assert.deepEqual(ipsOf(slices), next.map((e) => e.ip).sort());
    // An address now held by a pod on another node: out of one node's slice, into the other's.
    const moved = { ...next[0]!, node: 'n7' };
    writes = planSlices(slices, table([moved, ...next.slice(1)]), namer());
    assert.deepEqual(writes.map((w) => [w.op, w.op === 'delete' ? '' : w.node]).sort(), [['update', 'n0'], ['update', 'n7']]);
  });

  it('fills a node\'s slices with room before creating one, and deletes a slice left empty', () => {
    const all = Array.from({ length: 150 }, (_, i) => entry(i, { node: 'big' }));
    let slices = apply([], planSlices([], table(all), namer()));
    // 30 new pods fit into the half-empty slice: no new object.
    const more = [...all, ...Array.from({ length: 30 }, (_, i) => entry(500 + i, { node: 'big' }))];
    let writes = planSlices(slices, table(more), namer());
    assert.deepEqual(writes.map((w) => w.op), ['update']);
    slices = apply(slices, writes);
    // Every pod of the second slice goes: that slice is deleted, the other untouched.
    const second = new Set(slices[1]!.entries.map((e) => e.ip));
    writes = planSlices(slices, table(more.filter((e) => !second.has(e.ip))), namer());
    assert.deepEqual(writes.map((w) => [w.op, w.name]), [['delete', slices[1]!.name]]);
  });

  it('drops a duplicate entry left in a second slice by an interrupted round', () => {
    const a = entry(1, { node: 'n1' });
    const b = entry(2, { node: 'n1' });
    const slices: SliceState[] = [{ name: 'x', node: 'n1', resourceVersion: '7', entries: [a, b] }, { name: 'y', node: 'n2', resourceVersion: '8', entries: [b] }];
    assert.deepEqual(planSlices(slices, table([a, b]), namer()), [{ op: 'delete', name: 'y', resourceVersion: '8' }]);
  });

  it('reads a malformed slice from the API without trusting it: bad entries are left out and named', () => {
    const good = entry(3, { node: 'n1' });
    const { node: _n, ...wire } = good;
    const { slice, problems } = readSlice({
      metadata: { name: 'evil', resourceVersion: '9' }, node: 'n1',
      entries: [wire, { ...wire, ip: 'not-an-ip' }, { ...wire, captured: 'yes' }, { ...wire, serviceAccount: '' }, null, 'text', { ...wire, ipv6: '10.0.0.1' }],
    });
    assert.deepEqual(slice, { name: 'evil', node: 'n1', resourceVersion: '9', entries: [good] });
    assert.deepEqual(problems, [1, 2, 3, 4, 5, 6].map((i) => `evil: entry ${i} is malformed`));
    assert.deepEqual(readSlice({ metadata: { name: 'no-list' }, node: 'n1', entries: { a: 1 } }).problems, ['no-list: entries is not a list']);
    assert.deepEqual(readSlice({ metadata: { name: 'no-node' }, entries: [wire] }), { slice: { name: 'no-node', node: '', entries: [] }, problems: ['no-node: names no node'] });
    assert.deepEqual(readSlice(undefined).slice, { name: '', node: '', entries: [] });
  });

  it('names a slice after its node, hashed when the name would be too long', () => {
    assert.equal(sliceName('ip-10-0-12-34.ec2.internal', 'a1b2c3d4'), 'ip-10-0-12-34.ec2.internal-a1b2c3d4');
    const long = sliceName(`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(50)}`, 'a1b2c3d4');
    assert.match(long, /^[0-9a-f]{16}-a1b2c3d4$/);
  });
});
