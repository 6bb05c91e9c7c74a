import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import { describe, it } from 'node:test';
import { ConnectionLimiter, HandshakeGate } from '../../src/proxy/limits.ts';

/** Just what admit() touches of a socket: its peer address, 'close', and the reset. */
function fakeSocket(remoteAddress: string) {
  const s = Object.assign(new EventEmitter(), { remoteAddress, reset: false, resetAndDestroy() { s.reset = true; return s; } });
  return s;
}

describe('connection limits', () => {
  it('holds a total and a per-source count, and gives shares back on release', () => {
    const limiter = new ConnectionLimiter({ maxConnections: 3, maxPerSource: 2 });
    const a1 = limiter.acquire('a');
    const a2 = limiter.acquire('a');
    const a3 = limiter.acquire('a');
    assert.ok('release' in a1 && 'release' in a2);
    assert.ok('refused' in a3);
    assert.match(a3.refused, /a holds its maximum of 2/);
    const b1 = limiter.acquire('b');
    assert.ok('release' in b1);
    const c1 = limiter.acquire('c');
    assert.ok('refused' in c1);
    assert.match(c1.refused, /the agent holds its maximum of 3/);
    assert.equal(limiter.total, 3);
    a1.release();
    a1.release();
    assert.equal(limiter.total, 2, 'a second release gives nothing back twice');
    assert.ok('release' in limiter.acquire('a'));
  });

  it('asks to log a refused source at most once a second', () => {
    const limiter = new ConnectionLimiter({ maxConnections: 10, maxPerSource: 1 });
    limiter.acquire('a');
    const first = limiter.acquire('a');
    const second = limiter.acquire('a');
    assert.ok('refused' in first && 'refused' in second);
    assert.equal(first.log, true);
    assert.equal(second.log, false);
    const other = limiter.acquire('b');
    assert.ok('release' in other);
  });

  it('resets a socket over the limit and releases an admitted one when it closes', () => {
    const limiter = new ConnectionLimiter({ maxConnections: 10, maxPerSource: 1 });
    const refusals: string[] = [];
    const onRefused = (source: string) => { refusals.push(source); };
    const first = fakeSocket('::ffff:10.0.0.1');
    const second = fakeSocket('10.0.0.1');
    assert.equal(limiter.admit(first as unknown as net.Socket, onRefused), true);
    assert.equal(limiter.admit(second as unknown as net.Socket, onRefused), false, 'the same source in IPv4-mapped and plain form');
    assert.equal(second.reset, true);
    assert.deepEqual(refusals, ['10.0.0.1']);
    first.emit('close');
    assert.equal(limiter.total, 0);
    assert.equal(limiter.admit(fakeSocket('10.0.0.1') as unknown as net.Socket, onRefused), true);
  });
});

describe('handshake gate', () => {
  it('holds each source to a new rate once its worker\'s share changes', () => {
    const gate = new HandshakeGate({ maxPending: 1000, maxPendingPerSource: 1000, ratePerSecond: 100 });
    const admitted = (ip: string, n: number) => Array.from({ length: n }).filter(() => gate.admit(fakeSocket(ip) as unknown as net.Socket, () => undefined)).length;
    assert.equal(admitted('10.0.0.1', 1), 1);
    gate.setRate(1);
    assert.equal(admitted('10.0.0.1', 5), 2, 'the tokens it had are capped at the new burst, twice the rate');
    assert.equal(admitted('10.0.0.2', 5), 2);
    gate.setRate(50);
    assert.equal(admitted('10.0.0.3', 100), 100, 'a burst of twice the raised rate');
  });
});
