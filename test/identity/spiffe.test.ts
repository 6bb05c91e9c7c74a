import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SpiffeIdError } from '../../src/errors.ts';
import { formatSpiffeId, parseSpiffeUri, parseWorkloadId } from '../../src/identity/spiffe.ts';

describe('SPIFFE IDs', () => {
  it('formats and parses the ns/sa form', () => {
    const id = formatSpiffeId({ trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: 'web' });
    assert.equal(id, 'spiffe://cluster.local/ns/shop/sa/web');
    assert.deepEqual(parseWorkloadId(id), { trustDomain: 'cluster.local', namespace: 'shop', serviceAccount: 'web' });
    assert.deepEqual(parseWorkloadId(id, 'cluster.local').serviceAccount, 'web');
  });

  const invalid: Array<[string, RegExp]> = [
    ['http://cluster.local/ns/a/sa/b', /scheme/],
    ['spiffe://Cluster.local/ns/a/sa/b', /trust domain/],
    ['spiffe:///ns/a/sa/b', /trust domain/],
    ['spiffe://td:8080/ns/a/sa/b', /port/],
    ['spiffe://user@td/ns/a/sa/b', /user info/],
    ['spiffe://td/ns/a/sa/b?x=1', /query/],
    ['spiffe://td/ns/a/sa/b#f', /fragment/],
    ['spiffe://td/ns//sa/b', /empty path segment/],
    ['spiffe://td/ns/a/sa/b/', /empty path segment/],
    ['spiffe://td/ns/../sa/b', /not allowed/],
    ['spiffe://td/ns/a b/sa/b', /characters/],
    [`spiffe://td/${'a'.repeat(2100)}`, /longer than/],
  ];
  for (const [input, why] of invalid) {
    it(`refuses ${input.slice(0, 40)}`, () => {
      assert.throws(() => parseSpiffeUri(input), (err: unknown) => err instanceof SpiffeIdError && why.test(err.message));
    });
  }

  it('requires the ns/sa shape and the expected trust domain for workloads', () => {
    assert.throws(() => parseWorkloadId('spiffe://td/ns/a'), /ns\/<namespace>\/sa/);
    assert.throws(() => parseWorkloadId('spiffe://td/sa/a/ns/b'), /ns\/<namespace>\/sa/);
    assert.throws(() => parseWorkloadId('spiffe://other/ns/a/sa/b', 'td'), /trust domain other is not td/);
    assert.throws(() => formatSpiffeId({ trustDomain: 'td', namespace: '..', serviceAccount: 'x' }), SpiffeIdError);
  });
});
