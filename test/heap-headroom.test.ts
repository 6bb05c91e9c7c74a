import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import v8 from 'node:v8';
import { growingPercent, keepHeapHeadroom } from '../src/heap-headroom.ts';

const MIB = 1024 * 1024;
const LIMIT = join(import.meta.dirname, 'support', 'heap-limit.ts');

/** The last full collection's heap and old-generation limit (MiB), and the percent the child set. */
function limitAfter(headroomMiB: number): { heap: number; limit: number; percent: number } {
  const out = execFileSync(process.execPath, ['--expose-gc', '--trace-gc-nvp', LIMIT, String(headroomMiB)], { encoding: 'utf8' });
  const last = out.split('\n').filter((l) => l.includes('gc=mc')).at(-1) ?? '';
  const mib = (name: string) => Number(new RegExp(`${name}=(\\d+)`).exec(last)?.[1]) / MIB;
  return { heap: mib('start_object_size'), limit: mib('old_gen_allocation_limit'), percent: Number(/percent=(\d+)/.exec(out)?.[1]) };
}

describe('heap headroom', () => {
  it('puts the next limit the headroom above the live heap, within V8\'s own range of factors', () => {
    assert.equal(growingPercent(16 * MIB, 32 * MIB), 200, '16 MiB live: a factor of 3');
    assert.equal(growingPercent(25 * MIB, 16 * MIB), 64, 'an agent of a 1,000-pod mesh, 16 MiB of headroom');
    assert.equal(growingPercent(40 * MIB, 32 * MIB), 80, 'the Kubernetes client loaded: a factor of 1.8');
    assert.equal(growingPercent(4 * MIB, 32 * MIB), 300, 'never above V8\'s largest factor (4)');
    assert.equal(growingPercent(48 * MIB, 16 * MIB), 33, 'a small share of the live heap still holds');
    assert.equal(growingPercent(64 * MIB, 4 * MIB), 10, 'never below V8\'s smallest factor (1.1)');
    assert.equal(growingPercent(80 * MIB, 32 * MIB), 0, 'past 64 MiB live: V8 decides');
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

  it('is honoured by V8 at run time: the limit grows with the percent set, by the heap times the percent', () => {
    const small = limitAfter(8);
    const large = limitAfter(32);
    assert.ok(large.percent > small.percent && small.percent > 0, `percents ${small.percent}, ${large.percent}`);
    // V8: limit = heap x (1 + percent / 100), plus a growing step of its own of a few MB.
    for (const r of [small, large]) {
      const step = r.limit - r.heap * (1 + r.percent / 100);
      assert.ok(step >= 0 && step < 16, `limit ${r.limit.toFixed(1)} MiB for ${r.heap.toFixed(1)} MiB at ${r.percent}%`);
    }
    const expected = (large.heap * (large.percent - small.percent)) / 100;
    assert.ok(Math.abs(large.limit - small.limit - expected) < 1, `limits ${small.limit.toFixed(1)} and ${large.limit.toFixed(1)} MiB`);
  });
});
