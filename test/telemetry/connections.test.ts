import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import pino from 'pino';
import { PolicyDeniedError } from '../../src/errors.ts';
import { ConnectionTracker } from '../../src/telemetry/connections.ts';

/** A tracker whose access lines are collected as objects. */
function tracker() {
  const lines: Array<Record<string, any>> = [];
  const sink = new Writable({ write(chunk, _enc, done) { lines.push(JSON.parse(String(chunk))); done(); } });
  return { t: new ConnectionTracker(pino({ level: 'info' }, sink)), lines };
}

describe('open connections re-checked after a change', () => {
  it('ends the connections now refused, and only those, with the refusal on their access line', async () => {
    const { t, lines } = tracker();
    let denied = false;
    const a = t.open('inbound', '10.0.0.1');
    const b = t.open('inbound', '10.0.0.2');
    const ended: string[] = [];
    a.guard(() => { if (denied) throw new PolicyDeniedError('shop/no-web', 're-checked after a change: web is denied'); });
    b.guard(() => {});
    a.onTerminate(() => ended.push('a'));
    b.onTerminate(() => ended.push('b'));
    assert.equal(t.recheck(), 0, 'nothing changed: nothing ends');
    denied = true;
    assert.equal(t.recheck(), 1);
    assert.deepEqual(ended, ['a']);
    assert.equal(t.recheck(), 0, 'an ended connection is not ended twice');
    // The relay then closes it as a reset; the record keeps the refusal.
    a.close({ reset: true });
    await new Promise((r) => setImmediate(r));
    const line = lines.find((l) => l.conn === a.info.id);
    assert.equal(line?.error, 'policy_denied');
    assert.equal(line?.policy, 'shop/no-web');
    assert.match(line?.reason, /re-checked after a change/);
    assert.equal(t.totals.open, 1);
  });

  it('ends a connection refused while it was being set up as soon as it is relayed', () => {
    const { t } = tracker();
    const c = t.open('outbound', '10.0.0.1');
    c.guard(() => { throw new PolicyDeniedError('p', 'no'); });
    assert.equal(t.recheck(), 1);
    let ended = false;
    c.onTerminate(() => { ended = true; });
    assert.equal(ended, true);
  });

  it('forgets the guard of a closed connection', () => {
    const { t } = tracker();
    const c = t.open('inbound', '10.0.0.1');
    let checks = 0;
    c.guard(() => { checks++; });
    c.close({});
    t.recheck();
    assert.equal(checks, 0);
  });
});
