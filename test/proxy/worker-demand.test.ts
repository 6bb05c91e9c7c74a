import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type Step, WorkerDemand } from '../../src/proxy/worker-demand.ts';

describe('worker demand', () => {
  const make = (bounds = { min: 1, max: 4 }) => {
    const clock = { now: 0 };
    const demand = new WorkerDemand({ busyAbove: 0.5, sustainMs: 5_000, idleBelow: 0.2, retireAfterMs: 60_000, settleMs: 15_000, now: () => clock.now });
    // One sample a second, with these utilizations; the steps taken, with when.
    const run = (seconds: number, u: number[]) => {
      const steps: Array<[number, Step]> = [];
      for (let i = 0; i < seconds; i++) {
        clock.now += 1_000;
        const step = demand.next(u, bounds);
        if (step !== 'hold') steps.push([clock.now, step]);
      }
      return steps;
    };
    return { demand, run };
  };

  it('starts another once the data planes stayed busy for the sustain time', () => {
    const { demand, run } = make();
    assert.deepEqual(run(5, [0.9]), [], 'busy from the first sample (1 s) to 5 s: 4 s, not yet');
    assert.deepEqual(demand.demand, { state: 'busy', since: 1_000 });
    assert.deepEqual(run(1, [0.9]), [[6_000, 'start']], 'busy for 5 s');
    assert.equal(demand.demand.state, 'steady', 'the next one counts from its own start');
  });

  it('starts nothing on load that comes and goes, nor on one busy loop among idle ones', () => {
    const { demand, run } = make();
    for (let i = 0; i < 10; i++) assert.deepEqual([...run(3, [0.95]), ...run(1, [0.3])], []);
    assert.equal(demand.demand.state, 'steady');
    assert.deepEqual(run(30, [1, 0, 0]), [], 'mean 0.33; and 1 over two is too busy to retire one');
    assert.deepEqual(run(30, [0.49, 0.49]), [], 'just under');
  });

  it('waits the settling time after a start before the next, however busy, and never passes the most', () => {
    const { run } = make({ min: 1, max: 4 });
    assert.deepEqual(run(40, [1, 1]), [[6_000, 'start'], [21_000, 'start'], [36_000, 'start']]);
    const two = make({ min: 1, max: 2 });
    assert.deepEqual(two.run(60, [1, 1]), [], 'two of two serving');
  });

  it('retires one when one fewer would stay quiet for the retire time, never below the least', () => {
    const { demand, run } = make({ min: 1, max: 4 });
    assert.deepEqual(run(60, [0.05, 0.05]), [], '0.1 over one: quiet, for 59 s');
    assert.equal(demand.demand.state, 'idle');
    assert.deepEqual(run(1, [0.05, 0.05]), [[61_000, 'retire']]);
    assert.deepEqual(run(120, [0.05]), [], 'one of at least one');
    const busyOnOne = make({ min: 1, max: 4 });
    assert.deepEqual(busyOnOne.run(120, [0.15, 0.15]), [], '0.3 over one would be too busy');
    const atLeastTwo = make({ min: 2, max: 4 });
    assert.deepEqual(atLeastTwo.run(120, [0, 0]), []);
  });

  it('counts a sample of no data planes, or one not a number, as steady', () => {
    const { run } = make();
    assert.deepEqual(run(20, []), []);
    assert.deepEqual(run(200, [Number.NaN, Number.NaN]), []);
  });
});
