import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import v8 from 'node:v8';
import { growingPercent, keepHeapHeadroom, MIN_GROWING_PERCENT } from '../src/heap-headroom.ts';
import { type MemoryDials, type MemoryPressure, nextPressure, PRESS_AT, MIN_HEADROOM_MIB, pressedHeadroomMiB, processDials, RELAX_AT, watchMemoryTarget } from '../src/memory-target.ts';

const MIB = 1024 * 1024;
const CHURN = join(import.meta.dirname, 'support', 'memory-churn.ts');

function recordingDials(): MemoryDials & { calls: string[] } {
  const calls: string[] = [];
  return { calls, press: (rss) => calls.push(`press ${rss}`), stillPressed: (rss) => calls.push(`still ${rss}`), relax: () => calls.push('relax') };
}

describe('memory target', () => {
  it('presses from PRESS_AT of the target and relaxes only below RELAX_AT', () => {
    const relaxed: MemoryPressure = { kind: 'relaxed', targetMiB: 100, episodes: 0 };
    assert.deepEqual(nextPressure(relaxed, 100 * PRESS_AT - 1, 5), relaxed);
    const pressed = nextPressure(relaxed, 100 * PRESS_AT, 5);
    assert.deepEqual(pressed, { kind: 'pressed', targetMiB: 100, episodes: 1, since: 5 });
    // Between the two thresholds the state holds either way: one burst does not flap the trades.
    const between = 100 * (PRESS_AT + RELAX_AT) / 2;
    assert.equal(nextPressure(pressed, between, 6), pressed);
    assert.equal(nextPressure(relaxed, between, 6), relaxed);
    assert.deepEqual(nextPressure(pressed, 100 * RELAX_AT - 1, 7), { kind: 'relaxed', targetMiB: 100, episodes: 1 });
    assert.deepEqual(nextPressure({ kind: 'off' }, 10_000, 7), { kind: 'off' });
  });

  it('turns the dials on the way in and out, and at each check while pressed, with the resident set', () => {
    let rss = 50;
    const dials = recordingDials();
    const changes: string[] = [];
    const watch = watchMemoryTarget({ targetMiB: 100, dials, rssMiB: () => rss, now: () => 1, everyMs: 3_600_000, onChange: (s) => changes.push(s.kind) });
    try {
      watch.check();
      rss = 90;
      watch.check();
      watch.check();
      rss = 100;
      watch.check();
      rss = 80;
      watch.check();
      rss = 60;
      watch.check();
      rss = 95;
      watch.check();
      assert.deepEqual(dials.calls, ['press 90', 'still 90', 'still 100', 'still 80', 'relax', 'press 95']);
      assert.deepEqual(changes, ['pressed', 'relaxed', 'pressed']);
      assert.deepEqual(watch.state(), { kind: 'pressed', targetMiB: 100, episodes: 2, since: 1 });
    } finally {
      watch.stop();
    }
  });

  it('pressed, keeps as headroom what is left below the target, within 4 MiB and the usual', () => {
    assert.equal(pressedHeadroomMiB(109, 128, 32), 19);
    assert.equal(pressedHeadroomMiB(90, 128, 32), 32, 'never more than the usual headroom');
    assert.equal(pressedHeadroomMiB(127, 128, 32), MIN_HEADROOM_MIB);
    assert.equal(pressedHeadroomMiB(150, 128, 32), MIN_HEADROOM_MIB, 'over the target: the least');
  });

  it('does nothing without a target', () => {
    const dials = recordingDials();
    const watch = watchMemoryTarget({ targetMiB: 0, dials, rssMiB: () => 10_000 });
    watch.check();
    watch.stop();
    assert.deepEqual(dials.calls, []);
    assert.deepEqual(watch.state(), { kind: 'off' });
  });

  it('pressed, the heap keeps a few MiB of headroom after a collection at once; relaxed, its own again', () => {
    const heap = keepHeapHeadroom(32);
    const dials = processDials(heap, 32, 100);
    try {
      let garbage: unknown[] | undefined = [];
      for (let i = 0; i < 200_000; i++) garbage.push({ i, s: `g-${i}` });
      garbage = undefined;
      const before = v8.getHeapStatistics().used_heap_size;
      dials.press(96);
      const live = v8.getHeapStatistics().used_heap_size;
      assert.ok(before - live > 8 * MIB, `the collection freed the garbage: ${(before / MIB).toFixed(1)} -> ${(live / MIB).toFixed(1)} MiB`);
      const pressedPercent = heap.percent();
      assert.ok(Math.abs(pressedPercent - growingPercent(live, MIN_HEADROOM_MIB * MIB, MIN_GROWING_PERCENT)) <= 2, `percent ${pressedPercent}`);
      dials.relax();
      assert.ok(heap.percent() > pressedPercent, `relaxed ${heap.percent()} against pressed ${pressedPercent}`);
      assert.ok(Math.abs(heap.percent() - growingPercent(v8.getHeapStatistics().used_heap_size, 32 * MIB)) <= 2);
    } finally {
      heap.stop();
    }
  });

  it('keeps a churning process\'s heap and resident set well below where the headroom alone lets them grow', () => {
    const run = (mode: string) => JSON.parse(execFileSync(process.execPath, ['--max-semi-space-size=2', CHURN, mode], { encoding: 'utf8' })) as {
      targetMiB: number; maxHeapMiB: number; maxRssMiB: number; state: MemoryPressure; logged: string[];
    };
    const off = run('off');
    const near = run('near');
    assert.equal(off.state.kind, 'off');
    assert.ok(near.targetMiB > 0);
    assert.ok(near.state.kind === 'pressed' && near.state.episodes >= 1, JSON.stringify(near.state));
    assert.deepEqual(near.logged.slice(0, 1), ['near the memory target: trading CPU for memory']);
    // Measured 92-96 MiB of heap without a target and 53-57 with: the margin is half of that gap.
    assert.ok(off.maxHeapMiB - near.maxHeapMiB > 18, `largest heap ${off.maxHeapMiB.toFixed(1)} MiB without a target, ${near.maxHeapMiB.toFixed(1)} with`);
    assert.ok(off.maxRssMiB - near.maxRssMiB > 18, `largest RSS ${off.maxRssMiB.toFixed(1)} MiB without a target, ${near.maxRssMiB.toFixed(1)} with`);
  });
});
