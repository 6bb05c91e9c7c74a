import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatForwardedFor, parseForwardedFor } from '../../../src/proxy/tunnel/h2.ts';

describe('forwarded: for= (source pod across the tunnel)', () => {
  it('round-trips IPv4 and IPv6 addresses', () => {
    assert.equal(formatForwardedFor('10.241.1.11'), 'for=10.241.1.11');
    assert.equal(formatForwardedFor('fd00::1'), 'for="[fd00::1]"');
    for (const ip of ['10.241.1.11', 'fd00::1']) assert.equal(parseForwardedFor(formatForwardedFor(ip)), ip);
  });

  it('ignores anything else', () => {
    for (const bad of [undefined, ['for=10.0.0.1'], 'for=10.0.0.999', 'for=fd00::1', 'for=10.0.0.1;proto=http',
      'by=10.0.0.1', 'for="[not-an-ip]"', `for=${'1'.repeat(100)}`]) {
      assert.equal(parseForwardedFor(bad), undefined, String(bad));
    }
  });
});
