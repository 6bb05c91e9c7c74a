// Slot counts that several workers share (src/proxy/shared-slots.ts): one count for the node.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';
import { SharedSlotCounts, sharedSlotMemory } from '../../src/proxy/shared-slots.ts';

describe('shared slot counts', () => {
  it('count one total and one count per source over every instance on the memory', () => {
    const memory = sharedSlotMemory();
    const [one, two] = [new SharedSlotCounts(memory), new SharedSlotCounts(memory)];
    const limits = { maxConnections: 5, maxPerSource: 3 };
    assert.deepEqual(['10.0.0.1', '10.0.0.1', '10.0.0.1'].map((src, i) => (i % 2 ? one : two).take(src, limits)), [undefined, undefined, undefined]);
    assert.equal(one.take('10.0.0.1', limits), 'source', 'the fourth from one source, on either worker');
    assert.deepEqual([two.take('10.0.0.2', limits), one.take('10.0.0.3', limits)], [undefined, undefined]);
    assert.equal(two.take('10.0.0.4', limits), 'total');
    one.give('10.0.0.1');
    assert.equal(two.take('10.0.0.1', limits), undefined, 'a slot given back on one is free on the other');
    assert.equal(one.total, 5);
  });

  it('let in one of two takes for a source\'s last slot when one runs whole between the other\'s increments', () => {
    const memory = sharedSlotMemory();
    const limits = { maxConnections: 100, maxPerSource: 3 };
    const other = new SharedSlotCounts(memory);
    let otherGot: string | undefined = 'not run';
    let once = true;
    const racing = new SharedSlotCounts(memory, { between: () => {
      if (once) { once = false; otherGot = other.take('10.0.0.1', limits); }
    } });
    for (let k = 0; k < 2; k++) assert.equal(other.take('10.0.0.1', limits), undefined);
    // One slot left: the other worker's take runs between this one's two increments.
    const got = racing.take('10.0.0.1', limits);
    assert.deepEqual([otherGot, got], [undefined, 'source'], 'the take that finished first has the slot, the other is refused');
    assert.equal(other.take('10.0.0.1', limits), 'source', 'the source holds its limit and no more');
    assert.equal(other.total, 3);
  });

  it('never let threads racing for the last slots hold more than the limits', async () => {
    const memory = sharedSlotMemory();
    const limits = { maxConnections: 1000, maxPerSource: 600 };
    // Four threads, each with its own SharedSlotCounts on the memory, take as fast as they can:
    // for one source, then for sources of their own, and report how many slots they got.
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      import(workerData.module).then(({ SharedSlotCounts }) => {
        const counts = new SharedSlotCounts(workerData.memory);
        parentPort.once('message', () => {
          let shared = 0, own = 0;
          for (let i = 0; i < 2000; i++) if (counts.take('10.0.0.1', workerData.limits) === undefined) shared++;
          for (let i = 0; i < 2000; i++) if (counts.take('10.1.' + workerData.index + '.' + (i % 200), workerData.limits) === undefined) own++;
          parentPort.postMessage({ shared, own });
        });
        parentPort.postMessage('ready');
      });`;
    const module = new URL('../../src/proxy/shared-slots.ts', import.meta.url).href;
    const threads = Array.from({ length: 4 }, (_, index) => new Worker(code, { eval: true, workerData: { memory, limits, module, index } }));
    try {
      await Promise.all(threads.map((t) => new Promise((resolve) => t.once('message', resolve))));
      const got = await Promise.all(threads.map((t) => new Promise<{ shared: number; own: number }>((resolve) => { t.once('message', resolve); t.postMessage('go'); })));
      assert.equal(got.reduce((n, g) => n + g.shared, 0), 600, 'one source: exactly its limit, across the threads');
      assert.equal(got.reduce((n, g) => n + g.shared + g.own, 0), 1000, 'in all: exactly the limit');
      assert.equal(new SharedSlotCounts(memory).total, 1000);
    } finally {
      await Promise.all(threads.map((t) => t.terminate()));
    }
  });
});
