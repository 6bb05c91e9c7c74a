import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RateLimiter } from '../src/rate-limit.ts';

describe('rate limiter', () => {
  it('allows a burst, then the average rate, per key', () => {
    let t = 0;
    const rl = new RateLimiter({ ratePerSecond: 2, burst: 3, now: () => t });
    assert.deepEqual([rl.take('a'), rl.take('a'), rl.take('a')], [0, 0, 0]);
    assert.equal(rl.take('a'), 0.5, 'the fourth waits for half a second');
    assert.equal(rl.take('b'), 0, 'another key has its own bucket');
    t = 500;
    assert.equal(rl.take('a'), 0);
    assert.ok(rl.take('a') > 0);
  });

  it('stays bounded under many keys, evicting the least recently used', () => {
    const rl = new RateLimiter({ ratePerSecond: 1, burst: 1, maxKeys: 2, now: () => 0 });
    rl.take('a');
    rl.take('b');
    rl.take('a');
    rl.take('c'); // evicts b, the least recently used
    assert.ok(rl.take('a') > 0, 'a is still limited');
    assert.equal(rl.take('b'), 0, 'b was forgotten and starts with a full bucket');
  });
});
