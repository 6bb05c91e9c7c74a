import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import v8 from 'node:v8';
import { growingPercent, keepHeapHeadroom } from '../src/heap-headroom.ts';

const MIB = 1024 * 1024;

describe('heap headroom', () => {
  it('puts the next limit the headroom above the live heap, within V8\'s own range of factors', () => {
    assert.equal(growingPercent(16 * MIB, 32 * MIB), 200, '16 MiB live: limit 48 MiB');
    assert.equal(growingPercent(40 * MIB, 32 * MIB), 80, 'the Kubernetes client loaded: limit 72 MiB');
    assert.equal(growingPercent(4 * MIB, 32 * MIB), 300, 'never above V8\'s largest factor (4)');
    assert.equal(growingPercent(64 * MIB, 32 * MIB), 50);
    assert.equal(growingPercent(80 * MIB, 32 * MIB), 0, 'a factor under 1.5 could undercut V8\'s own: V8 decides');
    assert.equal(growingPercent(16 * MIB, 0), 0, 'no headroom: V8 decides');
  });

  it('sets the percent for this process\'s live heap, and 0 hands sizing back to V8', () => {
    const kept = keepHeapHeadroom(32);
    try {
      // The heap moves a little between the two readings.
      assert.ok(Math.abs(kept.percent() - growingPercent(v8.getHeapStatistics().used_heap_size, 32 * MIB)) <= 2);
      assert.ok(kept.percent() > 0, 'a test process\'s heap is far below 64 MiB');
    } finally {
      kept.stop();
    }
    const off = keepHeapHeadroom(0);
    assert.equal(off.percent(), 0);
    off.stop();
  });
});
