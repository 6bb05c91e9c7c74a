// The node's succession socket, in process (abstract Unix sockets need no root): the newest agent
// answers readiness, an older one answers again when the newer is gone, and a newer one takes the
// socket over when the older exits.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import pino from 'pino';
import { Succession } from '../../src/admin/succession.ts';
import { eventually } from '../support/wait.ts';

const log = pino({ level: 'silent' });

function agent(path: string) {
  const events: string[] = [];
  const s = new Succession(path, { succeeded: () => events.push('succeeded'), resumed: () => events.push('resumed') }, log);
  return { s, events };
}

describe('succession', () => {
  const path = () => `\0meshlet-test-succession-${process.pid}-${randomBytes(4).toString('hex')}`;

  it('has the older agent stop answering while a newer one runs, and answer again when it is gone', async () => {
    const p = path();
    const old = agent(p);
    await old.s.start();
    assert.deepEqual(old.s.state, { kind: 'holding', successors: 0 });
    const next = agent(p);
    await next.s.start();
    assert.deepEqual(next.s.state, { kind: 'joined' });
    await eventually('the older agent hears of the newer', () => old.events.length === 1);
    assert.deepEqual(old.events, ['succeeded']);
    assert.deepEqual(old.s.state, { kind: 'holding', successors: 1 });

    next.s.close();
    await eventually('the older agent answers again', () => old.events.length === 2);
    assert.deepEqual(old.events, ['succeeded', 'resumed']);
    assert.deepEqual(next.events, [], 'the newer agent is never told to stop');
    old.s.close();
  });

  it('hands the socket to the newer agent when the older exits, so a third one succeeds it', async () => {
    const p = path();
    const first = agent(p);
    await first.s.start();
    const second = agent(p);
    await second.s.start();
    first.s.close();
    await eventually('the second agent holds the socket', () => second.s.state.kind === 'holding');
    const third = agent(p);
    await third.s.start();
    assert.deepEqual(third.s.state, { kind: 'joined' });
    await eventually('the second agent hears of the third', () => second.events.includes('succeeded'));
    assert.deepEqual(second.events, ['succeeded']);
    third.s.close();
    second.s.close();
  });

  it('does nothing more once closed', async () => {
    const p = path();
    const a = agent(p);
    await a.s.start();
    a.s.close();
    const b = agent(p);
    await b.s.start();
    assert.deepEqual(b.s.state, { kind: 'holding', successors: 0 }, 'a closed agent leaves the socket free');
    b.s.close();
    assert.deepEqual(a.events, []);
  });
});
