import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { NoCertificateError } from '../../src/errors.ts';
import { createCsr, createRootCa, generateRsaKey, type RootCa, signWorkloadCsr } from '../../src/identity/ca.ts';
import { CertificateManager, type Clock } from '../../src/identity/certs.ts';
import { type CertificateProvider, createLocalCaProvider, type TrustBundle } from '../../src/identity/provider.ts';
import { ROOT_FILES, rootSetFromFiles } from '../../src/identity/roots.ts';
import { eventually } from '../support/wait.ts';

/** A clock the test moves by hand; timers fire when their time has come. */
class FakeClock implements Clock {
  t = Date.now();
  timers: Array<{ at: number; fn: () => void; id: number }> = [];
  #id = 0;
  now = () => this.t;
  setTimeout = (fn: () => void, ms: number) => { const id = ++this.#id; this.timers.push({ at: this.t + ms, fn, id }); return id; };
  clearTimeout = (h: unknown) => { this.timers = this.timers.filter((x) => x.id !== h); };
  advance(ms: number): void {
    this.t += ms;
    const due = this.timers.filter((x) => x.at <= this.t);
    this.timers = this.timers.filter((x) => x.at > this.t);
    for (const d of due) d.fn();
  }
}

const log = pino({ level: 'silent' });
const rootSet = (r: RootCa) => rootSetFromFiles({ [ROOT_FILES.key]: r.keyPem, [ROOT_FILES.cert]: r.certPem }, 'test');
const ID = 'spiffe://td/ns/shop/sa/web';
let root: RootCa;

const until = async (cond: () => boolean): Promise<void> => { await eventually('the condition', cond, 10_000, 5); };

describe('local CA', () => {
  before(async () => { root = await createRootCa({ trustDomain: 'td' }); });

  it('issues a leaf with one SPIFFE URI SAN, client and server auth, signed by the root', async () => {
    const { privateKeyPem } = await generateRsaKey();
    const { certPem, spiffeId } = signWorkloadCsr(root, createCsr(privateKeyPem, ID), { trustDomain: 'td', ttlMs: 3_600_000 });
    assert.equal(spiffeId, ID);
    const leaf = new X509Certificate(certPem);
    const ca = new X509Certificate(root.certPem);
    assert.equal(leaf.subjectAltName, `URI:${ID}`);
    assert.equal(leaf.ca, false);
    assert.ok(leaf.verify(ca.publicKey));
    assert.ok(leaf.checkIssued(ca));
    assert.deepEqual(leaf.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    const life = Date.parse(leaf.validTo) - Date.parse(leaf.validFrom);
    assert.ok(Math.abs(life - 3_660_000) < 2_000, `lifetime ${life}`);
  });

  it('refuses CSRs for another trust domain and garbage', async () => {
    const { privateKeyPem } = await generateRsaKey();
    assert.throws(() => signWorkloadCsr(root, createCsr(privateKeyPem, 'spiffe://other/ns/a/sa/b'), { trustDomain: 'td', ttlMs: 1000 }), /trust domain/);
    assert.throws(() => signWorkloadCsr(root, 'not a csr', { trustDomain: 'td', ttlMs: 1000 }), /not a valid PKCS#10/);
  });
});

describe('certificate manager', () => {
  before(async () => { root ??= await createRootCa({ trustDomain: 'td' }); });
  let manager: CertificateManager | undefined;
  after(() => manager?.close());

  it('fails closed until issued, renews at half life, and fails closed after expiry without a CA', async () => {
    const clock = new FakeClock();
    let caUp = true;
    let issued = 0;
    const local = createLocalCaProvider(rootSet(root), { trustDomain: () => 'td', ttlMs: 20_000 });
    const provider: CertificateProvider = {
      name: 'test',
      issue: async (csr, id) => {
        if (!caUp) throw new Error('CA unavailable');
        issued++;
        // Certificates are dated by the fake clock so that half life and expiry follow it.
        const { certPem } = signWorkloadCsr(root, csr, { trustDomain: 'td', ttlMs: 20_000, now: new Date(clock.t + 5_000) });
        void local;
        void id;
        return { certChainPem: certPem, trustBundlePem: root.certPem };
      },
    };
    manager = new CertificateManager({ provider, log, clock, retryMinMs: 1000, retryMaxMs: 4000 });
    manager.reconcile([ID]);
    assert.throws(() => manager!.assertAvailable(ID), NoCertificateError);
    assert.equal(manager.allReady, false);
    await until(() => manager!.allReady);
    const first = manager.assertAvailable(ID);
    assert.equal(issued, 1);
    // Dated so that notBefore is now (signing backdates a 20 s certificate by 5 s) and notAfter is
    // now + 25 s: the renewal timer is due at half life (±5% jitter), not earlier or later.
    assert.equal(clock.timers.length, 1, 'renewal scheduled');
    const lifetime = first.notAfter - first.notBefore;
    const halfLife = first.notBefore + lifetime / 2;
    assert.ok(Math.abs(clock.timers[0]!.at - halfLife) <= lifetime * 0.5 * 0.05 + 1000,
      `renewal due at +${clock.timers[0]!.at - clock.t} ms, half life at +${halfLife - clock.t} ms`);
    clock.advance(clock.timers[0]!.at - clock.t - 1);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(issued, 1, 'no renewal before its time');

    clock.advance(1);
    await until(() => issued === 2);
    await until(() => manager!.assertAvailable(ID).serial !== first.serial);

    // The CA goes away: the current certificate keeps serving until it expires, then fails closed.
    caUp = false;
    const current = manager.assertAvailable(ID);
    clock.advance(current.notAfter - clock.t - 1);
    assert.doesNotThrow(() => manager!.assertAvailable(ID));
    clock.advance(2);
    assert.throws(() => manager!.assertAvailable(ID), /expired/);
    assert.equal(manager.allReady, false);

    // The CA returns: the next retry issues again.
    caUp = true;
    for (let i = 0; i < 10 && !manager.allReady; i++) {
      clock.advance(4_000);
      await new Promise((r) => setTimeout(r, 50));
      await until(() => clock.timers.length > 0 || manager!.allReady);
    }
    await until(() => manager!.allReady);
  });

  it('drops identities that leave the node', async () => {
    const m = new CertificateManager({ provider: createLocalCaProvider(rootSet(root), { trustDomain: () => 'td', ttlMs: 60_000 }), log });
    try {
      m.reconcile([ID]);
      await until(() => m.allReady);
      m.reconcile([]);
      assert.throws(() => m.assertAvailable(ID), /not managed/);
      assert.deepEqual(m.states(), []);
    } finally {
      m.close();
    }
  });

  it('times renewal from arrival, not from a backdated notBefore', async () => {
    const clock = new FakeClock();
    const provider: CertificateProvider = {
      name: 'test',
      // Backdated by the CA: notBefore is 5 s ago, notAfter 20 s ahead.
      issue: async (csr) => ({ certChainPem: signWorkloadCsr(root, csr, { trustDomain: 'td', ttlMs: 20_000, now: new Date(clock.t) }).certPem, trustBundlePem: root.certPem }),
    };
    const m = new CertificateManager({ provider, log, clock });
    try {
      m.reconcile([ID]);
      await until(() => m.allReady);
      const cert = m.assertAvailable(ID);
      assert.equal(cert.notBefore, Math.floor((clock.t - 5_000) / 1000) * 1000);
      // Half of what is still ahead (about 20 s; X.509 times have whole seconds) ±5%, not half of
      // the 25 s lifetime counted from the backdated notBefore (which would be due in 7.5 s).
      const ahead = cert.notAfter - clock.t;
      assert.ok(ahead > 18_900 && ahead <= 20_000, `${ahead} ms ahead`);
      const due = clock.timers[0]!.at - clock.t;
      assert.ok(Math.abs(due - ahead / 2) <= ahead / 2 * 0.05 + 1, `renewal due in ${due} ms, half of ${ahead} ms`);
    } finally {
      m.close();
    }
  });

  it('trusts a new bundle at once and re-issues certificates from a root that no longer signs', async () => {
    const clock = new FakeClock();
    const next = await createRootCa({ trustDomain: 'td' });
    let signer = root;
    let bundle = root.certPem;
    let listener: ((b: TrustBundle) => void) | undefined;
    let issued = 0;
    const provider: CertificateProvider = {
      name: 'test',
      issue: async (csr) => {
        issued++;
        return { certChainPem: signWorkloadCsr(signer, csr, { trustDomain: 'td', ttlMs: 3_600_000 }).certPem, trustBundlePem: bundle };
      },
      watchBundle: (l) => { listener = l; return () => { listener = undefined; }; },
    };
    const m = new CertificateManager({ provider, log, clock, rootChangeSpreadMs: 1_000 });
    try {
      m.reconcile([ID]);
      await until(() => m.allReady);
      const first = m.assertAvailable(ID);
      const fp = (pem: string) => new X509Certificate(pem).fingerprint256;
      assert.equal(first.signedBy, fp(root.certPem));
      assert.ok(listener, 'the manager watches the bundle');

      // prepare: both roots trusted, the old one still signs. New context, same certificate, no re-issue.
      bundle = root.certPem + next.certPem;
      listener!({ pem: root.certPem + next.certPem, signingFingerprint: fp(root.certPem) });
      const prepared = m.assertAvailable(ID);
      assert.equal(prepared.serial, first.serial);
      assert.ok(prepared.revision > first.revision, 'context rebuilt with the new bundle');
      assert.equal(prepared.trustBundlePem, root.certPem + next.certPem);
      assert.equal(clock.timers.length, 1, 'only the regular renewal is scheduled');
      assert.ok(clock.timers[0]!.at - clock.t > 1_000_000);

      // activate: the new root signs; the certificate is re-issued within the spread.
      signer = next;
      listener!({ pem: root.certPem + next.certPem, signingFingerprint: fp(next.certPem) });
      assert.ok(clock.timers[0]!.at - clock.t <= 1_000, 'early re-issue scheduled within the spread');
      assert.doesNotThrow(() => m.assertAvailable(ID), 'the old certificate serves meanwhile');
      clock.advance(1_000);
      await until(() => m.assertAvailable(ID).signedBy === fp(next.certPem));
      assert.equal(issued, 2);
    } finally {
      m.close();
    }
  });
});
