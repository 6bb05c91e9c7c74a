import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { afterEach, describe, it, mock } from 'node:test';
import pino from 'pino';
import { ProbeGate } from '../../src/capture/probe-gate.ts';
import { vouchLines } from '../../src/capture/ipset.ts';

function harness(opts: { ips?: string[]; fail?: () => boolean; ttlMs?: number } = {}) {
  const applied: string[] = [];
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({ write(chunk, _enc, cb) { lines.push(JSON.parse(String(chunk))); cb(); } });
  let ips = opts.ips ?? ['10.0.0.1', '10.0.0.2'];
  const gate = new ProbeGate({
    ttlMs: opts.ttlMs ?? 4000, log: pino({ level: 'info' }, sink), vouched: () => ips,
    // Recorded as the ipset backend would write it (the text is checked below).
    write: async (written, ttl) => {
      if (opts.fail?.()) throw new Error('ipset: no such set');
      applied.push(`${vouchLines('vouched', written, ttl).join('\n')}\n`);
    },
  });
  return { gate, applied, lines, setIps: (next: string[]) => { ips = next; } };
}

describe('probe gate', () => {
  afterEach(() => mock.timers.reset());

  it('re-adds every vouched pod with the TTL in whole seconds', async () => {
    const { gate, applied } = harness({ ttlMs: 4000 });
    await gate.refresh();
    assert.deepEqual(applied, ['add vouched 10.0.0.1 timeout 4\nadd vouched 10.0.0.2 timeout 4\n']);
    assert.equal(gate.status().vouched, 2);
    assert.ok(gate.status().lastRefresh);
  });

  it('writes nothing when there is nothing to vouch for, so old entries time out', async () => {
    const { gate, applied, lines } = harness({ ips: [] });
    await gate.refresh();
    assert.deepEqual(applied, []);
    assert.equal(gate.status().vouched, 0);
    assert.equal(lines.length, 0, 'no change from the initial zero: nothing logged');
  });

  it('logs when the number of vouched pods changes', async () => {
    const { gate, lines, setIps } = harness();
    await gate.refresh();
    await gate.refresh();
    setIps(['10.0.0.1']);
    await gate.refresh();
    assert.deepEqual(lines.map((l) => [l.vouched, l.was]), [[2, 0], [1, 2]]);
  });

  it('refreshes four times per TTL until stopped', async () => {
    mock.timers.enable({ apis: ['setInterval'] });
    const { gate, applied } = harness({ ttlMs: 4000 });
    gate.start();
    await gate.refresh();
    assert.equal(applied.length, 1, 'start refreshes at once');
    for (let i = 0; i < 4; i++) {
      mock.timers.tick(1000);
      await gate.refresh();
    }
    // Each tick started a refresh that the awaited call joined: one apply per tick.
    assert.equal(applied.length, 5);
    gate.stop();
    mock.timers.tick(5000);
    await new Promise((r) => setImmediate(r));
    assert.equal(applied.length, 5, 'no refresh after stop');
  });

  it('joins overlapping refreshes into one run', async () => {
    const { gate, applied } = harness();
    await Promise.all([gate.refresh(), gate.refresh(), gate.refresh()]);
    assert.equal(applied.length, 1);
  });

  it('counts failures, logs the first one, and recovers', async () => {
    let failing = true;
    const { gate, applied, lines } = harness({ fail: () => failing });
    await gate.refresh();
    await gate.refresh();
    assert.equal(gate.status().failures, 2);
    assert.equal(gate.status().lastError, 'ipset: no such set');
    assert.equal(lines.filter((l) => l.level === 50).length, 1, 'one error line for a run of failures');
    failing = false;
    await gate.refresh();
    assert.equal(applied.length, 1);
    assert.equal(gate.status().lastError, undefined);
    assert.ok(lines.some((l) => l.msg === 'probe gate refreshed again'));
  });

  it('lets the agent through at once to a pod it just started vouching for, and costs nothing once it does', async () => {
    const { gate, applied, setIps } = harness({ ips: ['10.0.0.1'] });
    await gate.refresh();
    assert.equal(gate.ensure('10.0.0.1'), undefined, 'vouched and fresh: no refresh, no await');
    setIps(['10.0.0.1', '10.0.0.2']);
    const waiting = gate.ensure('10.0.0.2');
    assert.ok(waiting, 'a pod not in the set yet waits for a refresh that puts it there');
    await waiting;
    assert.match(applied.at(-1) ?? '', /add vouched 10\.0\.0\.2 timeout 4/);
    assert.equal(gate.ensure('10.0.0.2'), undefined);
    setIps([]);
    await gate.refresh();
    assert.ok(gate.ensure('10.0.0.1'), 'after the agent stopped vouching, nothing counts as vouched');
  });
});
