import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { OpenRedirects, sharedRedirectMemory } from '../../src/proxy/redirects.ts';

describe('open redirected connections', () => {
  it('knows a 4-tuple while a connection with it is open, counting duplicates, and forgets it after', () => {
    const r = new OpenRedirects();
    const first = r.add('10.0.0.1', 40000, '10.0.0.2', 8080);
    const second = r.add('10.0.0.1', 40000, '10.0.0.2', 8080);
    assert.equal(r.has('10.0.0.1', 40000, '10.0.0.2', 8080), true);
    assert.equal(r.has('10.0.0.1', 40000, '10.0.0.2', 8081), false, 'another destination port');
    assert.equal(r.has('10.0.0.1', 40001, '10.0.0.2', 8080), false, 'another source port');
    first();
    first();
    assert.equal(r.has('10.0.0.1', 40000, '10.0.0.2', 8080), true, 'releasing twice counts once');
    second();
    assert.equal(r.has('10.0.0.1', 40000, '10.0.0.2', 8080), false);
  });

  it('is one set for every worker on the shared memory: a connection one holds, another does not reuse', () => {
    const memory = sharedRedirectMemory();
    const [one, two] = [new OpenRedirects(memory), new OpenRedirects(memory)];
    const release = one.add('10.0.0.1', 40000, '10.0.0.2', 8080);
    assert.equal(two.has('10.0.0.1', 40000, '10.0.0.2', 8080), true, 'held by the other worker');
    assert.equal(new OpenRedirects().has('10.0.0.1', 40000, '10.0.0.2', 8080), false, 'an instance on its own memory does not see it');
    release();
    assert.equal(two.has('10.0.0.1', 40000, '10.0.0.2', 8080), false);
  });

  it('tells apart thousands of open tuples from the ports a delivery would pick, with few false alarms', () => {
    const r = new OpenRedirects(sharedRedirectMemory());
    // 5,000 connections of one pod to one destination held open (the pod's own ports).
    for (let p = 32768; p < 37768; p++) r.add('10.0.0.1', p, '10.0.0.2', 8080);
    for (let p = 32768; p < 37768; p++) assert.equal(r.has('10.0.0.1', p, '10.0.0.2', 8080), true);
    // A false alarm costs a delivery another random port: rare here (both counters shared).
    let alarms = 0;
    for (let p = 1024; p < 32768; p++) if (r.has('10.0.0.1', p, '10.0.0.2', 8080)) alarms++;
    assert.ok(alarms < 31744 * 0.05, `${alarms} of 31,744 free ports taken for open`);
  });
});
