import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { formatForwardedFor, parseForwardedFor, tunnelPeerProblem } from '../../../src/proxy/tunnel/h2.ts';

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

describe('what a tunnel peer must prove', () => {
  const source = 'spiffe://td.example/ns/shop/sa/web';
  it('a known destination: exactly its identity', () => {
    assert.equal(tunnelPeerProblem('URI:spiffe://td.example/ns/shop/sa/db', 'spiffe://td.example/ns/shop/sa/db', source), undefined);
    assert.match(tunnelPeerProblem('URI:spiffe://td.example/ns/shop/sa/other', 'spiffe://td.example/ns/shop/sa/db', source) ?? '', /presented .*other, expected .*sa\/db/);
  });
  it('an address the table does not know: one identity of the source\'s own trust domain, nothing else', () => {
    assert.equal(tunnelPeerProblem('URI:spiffe://td.example/ns/shop/sa/db', undefined, source), undefined);
    assert.equal(tunnelPeerProblem('DNS:x, URI:spiffe://td.example/ns/a/sa/b', undefined, source), undefined);
    for (const bad of ['URI:spiffe://other.example/ns/shop/sa/db', 'URI:spiffe://td.example.evil/ns/x/sa/y', 'URI:spiffe://td.example/ns/a/sa/b, URI:spiffe://td.example/ns/c/sa/d', 'DNS:db', undefined]) {
      assert.match(tunnelPeerProblem(bad, undefined, source) ?? '', /expected one of spiffe:\/\/td\.example\//, String(bad));
    }
  });
});
