import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { OpenRedirects } from '../../src/proxy/redirects.ts';

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
    assert.equal(r.size, 0);
  });
});
