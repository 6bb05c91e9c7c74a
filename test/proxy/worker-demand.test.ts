import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { WorkerDemand } from '../../src/proxy/worker-demand.ts';

describe('worker demand', () => {
  const make = () => {
    const clock = { now: 0 };
    const demand = new WorkerDemand({ busyAbove: 0.5, sustainMs: 5_000, settleMs: 15_000, now: () => clock.now });
    // One sample a second, each data plane's utilization the same `u`.
    const run = (seconds: number, u: number[]) => {
      const starts: number[] = [];
      for (let i = 0; i < seconds; i++) {
        clock.now += 1_000;
        if (demand.shouldStart(u)) starts.push(clock.now);
      }
      return starts;
    };
    return { demand, run };
  };

  it('starts another once the data planes stayed busy for the sustain time', () => {
    const { demand, run } = make();
    assert.deepEqual(run(5, [0.9]), [], 'busy from the first sample (1 s) to 5 s: 4 s, not yet');
    assert.deepEqual(demand.demand, { state: 'busy', since: 1_000 });
    assert.deepEqual(run(1, [0.9]), [6_000], 'busy for 5 s');
    assert.equal(demand.demand.state, 'quiet', 'the next one counts from its own start');
  });

  it('starts nothing on load that comes and goes, nor on one busy loop among idle ones', () => {
    const { demand, run } = make();
    for (let i = 0; i < 10; i++) assert.deepEqual([...run(3, [0.95]), ...run(1, [0.1])], []);
    assert.equal(demand.demand.state, 'quiet');
    assert.deepEqual(run(30, [1, 0, 0]), [], 'mean 0.33');
    assert.deepEqual(run(30, [0.49, 0.49]), [], 'just under');
  });

  it('waits the settling time after a start before the next, however busy', () => {
    const { run } = make();
    const starts = run(40, [1, 1]);
    assert.deepEqual(starts, [6_000, 21_000, 36_000]);
  });

  it('counts a sample of no data planes, or one not a number, as quiet', () => {
    const { run } = make();
    assert.deepEqual(run(20, []), []);
    assert.deepEqual(run(20, [Number.NaN]), []);
  });
});
