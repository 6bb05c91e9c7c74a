// The identities a data plane presents: a TLS context is built when a connection first needs it,
// once per certificate revision, and material that does not load is refused, never served.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { NoCertificateError } from '../../src/errors.ts';
import type { CertificateManager } from '../../src/identity/certs.ts';
import { Identities } from '../../src/proxy/identities.ts';
import type { IdentityMaterial } from '../../src/proxy/snapshot.ts';
import { issuedIdentities } from '../support/proxy-context.ts';

const TD = 'identities.test';
const id = (sa: string) => `spiffe://${TD}/ns/shop/sa/${sa}`;

describe('a data plane\'s identities', () => {
  let certs: CertificateManager;
  let materials: IdentityMaterial[];
  before(async () => {
    [certs] = await issuedIdentities(TD, [id('web'), id('cache'), id('db')]) as [CertificateManager];
    materials = certs.materials();
  });
  after(() => certs?.close());

  it('builds a context only for an identity a connection asks for, and keeps it while its revision holds', () => {
    const identities = new Identities();
    identities.update(materials);
    assert.equal(identities.loaded, 0, 'nothing built before a connection asks');
    const web = identities.assertAvailable(id('web'));
    assert.equal(identities.loaded, 1);
    assert.equal(identities.secureContextFor(id('web')), web.context, 'the same context again');
    identities.update(materials);
    assert.equal(identities.assertAvailable(id('web')).context, web.context, 'kept across a snapshot of the same revision');
    assert.equal(identities.loaded, 1);
  });

  it('builds again for a new revision, and gives up the old one', () => {
    const identities = new Identities();
    identities.update(materials);
    const before = identities.secureContextFor(id('db'));
    const next = materials.map((m) => (m.state === 'available' && m.spiffeId === id('db') ? { ...m, revision: m.revision + 1 } : m));
    identities.update(next);
    assert.equal(identities.loaded, 0, 'the old revision\'s context is not kept');
    assert.notEqual(identities.secureContextFor(id('db')), before);
    assert.equal(identities.loaded, 1);
  });

  it('parses a trust bundle once for every identity that shares it', () => {
    const identities = new Identities();
    identities.update(materials);
    assert.equal(identities.assertAvailable(id('web')).roots, identities.assertAvailable(id('cache')).roots);
    assert.equal(identities.rootsOf(id('db')), identities.assertAvailable(id('web')).roots);
  });

  it('refuses material that does not load, and serves the others', () => {
    const identities = new Identities();
    const broken = materials.map((m) => (m.state === 'available' && m.spiffeId === id('cache') ? { ...m, privateKeyPem: '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n' } : m));
    identities.update(broken);
    assert.throws(() => identities.assertAvailable(id('cache')), (err) => err instanceof NoCertificateError && /unusable/.test(err.message));
    assert.throws(() => identities.secureContextFor(id('cache')), NoCertificateError, 'refused again');
    assert.equal(identities.rootsOf(id('cache')), undefined);
    assert.ok(identities.secureContextFor(id('web')));
  });

  it('refuses an expired certificate without building its context, and an identity it does not manage', () => {
    let now = Date.now();
    const identities = new Identities(() => now);
    identities.update(materials);
    now = Math.max(...materials.flatMap((m) => (m.state === 'available' ? [m.notAfter] : []))) + 1;
    assert.throws(() => identities.assertAvailable(id('web')), (err) => err instanceof NoCertificateError && /expired/.test(err.message));
    assert.equal(identities.loaded, 0);
    assert.throws(() => identities.assertAvailable(id('nobody')), (err) => err instanceof NoCertificateError && /not managed/.test(err.message));
  });

  it('says when a trust bundle changed under a certificate it holds', () => {
    const identities = new Identities();
    assert.deepEqual(identities.update(materials), { bundleChanged: false });
    const rebundled = materials.map((m) => (m.state === 'available' ? { ...m, trustBundlePem: `${m.trustBundlePem}${m.trustBundlePem}`, revision: m.revision + 1 } : m));
    assert.deepEqual(identities.update(rebundled), { bundleChanged: true }, 'whether or not a context was built');
    assert.equal(identities.assertAvailable(id('web')).roots.length, 2);
  });
});
