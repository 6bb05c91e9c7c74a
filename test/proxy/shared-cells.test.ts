// Counters workers share, each worker's part mirrored (src/proxy/shared-cells.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { reclaim, SharedCells } from '../../src/proxy/shared-cells.ts';

describe('shared cells', () => {
  it('count every worker\'s adds in one place, and take back what a worker that exited held', () => {
    const shared = new SharedArrayBuffer(4 * 8);
    const [mineA, mineB] = [new SharedArrayBuffer(4 * 8), new SharedArrayBuffer(4 * 8)];
    const [a, b] = [new SharedCells(shared, mineA), new SharedCells(shared, mineB)];
    a.add(0, 1); a.add(3, 2); b.add(3, 1); b.add(5, 1); a.add(3, -1);
    assert.deepEqual([0, 3, 5].map((i) => a.load(i)), [1, 2, 1], 'one count for both');
    assert.equal(b.add(0, 0), 1, 'add answers the shared value before it');
    reclaim(shared, mineA);
    assert.deepEqual([0, 3, 5].map((i) => b.load(i)), [0, 1, 1], 'only b\'s part is left');
    assert.deepEqual([...new Int32Array(mineA)], [0, 0, 0, 0, 0, 0, 0, 0], 'the mirror is empty for a replacement');
    reclaim(shared, mineA);
    assert.deepEqual([0, 3, 5].map((i) => b.load(i)), [0, 1, 1], 'reclaiming twice takes nothing more');
  });

  it('keep no mirror for a data plane that cannot die alone', () => {
    const shared = new SharedArrayBuffer(4 * 2);
    const c = new SharedCells(shared);
    c.add(1, 3);
    assert.equal(c.load(1), 3);
  });
});
