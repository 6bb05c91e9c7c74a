// The CA's X.509 with either kind of key (src/identity/ca.ts): ECDSA P-256 by default, RSA-2048 as
// an option, roots and workloads of either kind mixed; CSRs with other keys refused.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import forge from 'node-forge';
import { createCsr, createRootCa, generateKey, keyAlgorithmOf, type KeyAlgorithm, parseWorkloadCsr, signWorkloadCsr } from '../../src/identity/ca.ts';

const TD = 'td.test';
const ID = `spiffe://${TD}/ns/shop/sa/web`;
const pkcs8 = (key: ReturnType<typeof generateKeyPairSync>['privateKey']) => key.export({ type: 'pkcs8', format: 'pem' }).toString();

/** OpenSSL's word on a chain: the same verifier peers' TLS stacks use. */
function opensslVerifies(rootPem: string, leafPem: string): boolean {
  const dir = mkdtempSync(join(tmpdir(), 'meshlet-ca-test-'));
  try {
    writeFileSync(join(dir, 'root.pem'), rootPem);
    writeFileSync(join(dir, 'leaf.pem'), leafPem);
    execFileSync('openssl', ['verify', '-CAfile', join(dir, 'root.pem'), '-purpose', 'sslclient', join(dir, 'leaf.pem')], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('CA keys: ECDSA by default, RSA as an option', () => {
  it('makes ECDSA P-256 keys and roots unless told, RSA-2048 when told', async () => {
    const ec = await createRootCa({ trustDomain: TD });
    const root = new X509Certificate(ec.certPem);
    assert.equal(root.publicKey.asymmetricKeyType, 'ec');
    assert.equal(root.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.equal(keyAlgorithmOf(ec.keyPem), 'ecdsa-p256');
    const rsa = await createRootCa({ trustDomain: TD, keyAlgorithm: 'rsa-2048' });
    assert.equal(new X509Certificate(rsa.certPem).publicKey.asymmetricKeyDetails?.modulusLength, 2048);
    assert.equal(keyAlgorithmOf(rsa.keyPem), 'rsa-2048');
    assert.equal(keyAlgorithmOf((await generateKey()).privateKeyPem), 'ecdsa-p256');
  });

  for (const [rootAlg, leafAlg] of [['ecdsa-p256', 'ecdsa-p256'], ['ecdsa-p256', 'rsa-2048'], ['rsa-2048', 'ecdsa-p256'], ['rsa-2048', 'rsa-2048']] as Array<[KeyAlgorithm, KeyAlgorithm]>) {
    it(`issues a ${leafAlg} workload under a ${rootAlg} root that Node and OpenSSL verify`, async () => {
      const root = await createRootCa({ trustDomain: TD, keyAlgorithm: rootAlg });
      const { privateKeyPem } = await generateKey(leafAlg);
      const { certPem } = signWorkloadCsr(root, createCsr(privateKeyPem, ID), { trustDomain: TD, ttlMs: 3_600_000 });
      const leaf = new X509Certificate(certPem);
      const ca = new X509Certificate(root.certPem);
      assert.ok(leaf.verify(ca.publicKey) && leaf.checkIssued(ca));
      assert.equal(leaf.subjectAltName, `URI:${ID}`);
      assert.ok(leaf.checkPrivateKey(createPrivateKey(privateKeyPem)), 'the certificate is for the CSR\'s key');
      assert.ok(opensslVerifies(root.certPem, certPem), 'openssl verify');
      // An ECDSA key only signs: no key encipherment in its usage.
      const text = execFileSync('openssl', ['x509', '-noout', '-text'], { input: certPem }).toString();
      assert.equal(/Key Encipherment/.test(text), leafAlg === 'rsa-2048');
      assert.match(text, rootAlg === 'ecdsa-p256' ? /Signature Algorithm: ecdsa-with-SHA256/ : /Signature Algorithm: sha256WithRSAEncryption/);
    });
  }

  it('refuses CSRs whose key is neither P-256/P-384 nor RSA 2048-4096', () => {
    // An Ed25519 request, made by OpenSSL as any client could.
    const dir = mkdtempSync(join(tmpdir(), 'meshlet-ca-test-'));
    try {
      writeFileSync(join(dir, 'ed.pem'), pkcs8(generateKeyPairSync('ed25519').privateKey));
      const ed = execFileSync('openssl', ['req', '-new', '-key', join(dir, 'ed.pem'), '-subj', '/O=meshlet', '-addext', `subjectAltName=URI:${ID}`]).toString();
      assert.throws(() => parseWorkloadCsr(ed, TD), /key must be ECDSA or RSA \(got ed25519\)/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const p521 = pkcs8(generateKeyPairSync('ec', { namedCurve: 'secp521r1' }).privateKey);
    assert.throws(() => parseWorkloadCsr(createCsr(p521, ID), TD), /EC key must be on P-256 or P-384 \(got secp521r1\)/);
    const small = pkcs8(generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey);
    assert.throws(() => parseWorkloadCsr(createCsr(small, ID), TD), /RSA key must have 2048 to 4096 bits \(got 1024\)/);
    const p384 = pkcs8(generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey);
    assert.equal(parseWorkloadCsr(createCsr(p384, ID), TD).spiffeId, ID);
  });

  it('refuses a CSR whose proof of possession was made with another key', async () => {
    const [a, b] = [await generateKey(), await generateKey()];
    const parse = (pem: string) => forge.asn1.fromDer(forge.pem.decode(pem)[0]!.body);
    // A's request info (A's key, the SPIFFE ID) under the signature of B's request.
    const forA = parse(createCsr(a.privateKeyPem, ID));
    const forB = parse(createCsr(b.privateKeyPem, ID));
    (forA.value as forge.asn1.Asn1[])[2] = (forB.value as forge.asn1.Asn1[])[2]!;
    const pem = forge.pem.encode({ type: 'CERTIFICATE REQUEST', body: forge.asn1.toDer(forA).getBytes() });
    assert.throws(() => parseWorkloadCsr(pem, TD), /signature does not verify/);
    assert.equal(parseWorkloadCsr(createCsr(a.privateKeyPem, ID), TD).spiffeId, ID, 'the same request, signed by its own key, passes');
  });
});
