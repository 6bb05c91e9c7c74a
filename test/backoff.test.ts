import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffMs } from '../src/backoff.ts';

describe('backoff', () => {
  it('doubles from the minimum per attempt and stops at the cap', () => {
    assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map((a) => backoffMs(a, 500, 30_000)), [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000]);
    assert.equal(backoffMs(10_000, 500, 30_000), 30_000);
    assert.equal(backoffMs(0, 500, 30_000), 500, 'attempt counts from 1');
  });
});
