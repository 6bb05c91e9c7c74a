import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { CaUnavailableError } from '../../src/errors.ts';
import { CA_CONNECTIONS, createCaClientProvider } from '../../src/identity/ca-client.ts';
import { CertificateManager } from '../../src/identity/certs.ts';
import type { TrustBundle } from '../../src/identity/provider.ts';
import { rotateRoot } from '../../src/identity/roots.ts';
import { DB, startTestCa, type TestCa, TOKENS, WEB, workloadCsr } from '../support/ca.ts';

const log = pino({ level: 'silent' });

describe('CA client', () => {
  let ca: TestCa;
  let tokenFile: string;
  let bundleFile: string;
  before(async () => {
    ca = await startTestCa();
    tokenFile = join(ca.dir, 'token');
    bundleFile = join(ca.dir, 'bundle.pem');
    await writeFile(tokenFile, `${TOKENS['node-a']}\n`);
    await writeFile(bundleFile, ca.rootPem);
  });
  after(() => ca.close());

  const provider = (over: { url?: string; bundlePollMs?: number } = {}) => createCaClientProvider({
    url: over.url ?? ca.url, tokenFile, trustBundleFile: bundleFile, log, bundlePollMs: over.bundlePollMs ?? 60_000, requestTimeoutMs: 2_000,
  });

  it('obtains certificates through the certificate manager, for its own node\'s workloads only', async () => {
    const p = provider();
    const certs = new CertificateManager({ provider: p, log, retryMinMs: 50, retryMaxMs: 100 });
    try {
      certs.reconcile([WEB, DB]);
      const deadline = Date.now() + 10_000;
      const dbRefused = () => certs.states().some((c) => c.spiffeId === DB && c.state === 'pending' && c.lastError !== undefined);
      while (Date.now() < deadline && !(certs.pendingIdentities().length === 1 && dbRefused())) await new Promise((r) => setTimeout(r, 20));
      assert.equal(certs.assertAvailable(WEB).spiffeId, WEB);
      assert.deepEqual(certs.pendingIdentities(), [DB]);
      const db = certs.states().find((s) => s.spiffeId === DB);
      assert.equal(db?.state, 'pending');
      assert.match(db && 'lastError' in db ? String(db.lastError) : '', /403 identity_not_allowed/);
      assert.throws(() => certs.assertAvailable(DB), /no certificate/);
    } finally {
      certs.close();
      await p.close();
    }
  });

  it('asks for many certificates at once over a few connections, none refused for want of a slot', async () => {
    const p = provider();
    let connections = 0;
    const count = () => { connections++; };
    ca.service.server.on('secureConnection', count);
    try {
      // A node's start: every pod's certificate at once, more than the CA's signing slots per node.
      const csrs = await Promise.all(Array.from({ length: 40 }, () => workloadCsr(WEB)));
      const issued = await Promise.all(csrs.map((csr) => p.issue(csr, WEB)));
      assert.equal(issued.length, 40);
      for (const c of issued) assert.ok(new X509Certificate(c.certChainPem).subjectAltName?.includes(WEB));
      assert.ok(connections >= 1 && connections <= CA_CONNECTIONS, `${connections} TLS connections for 40 requests`);
    } finally {
      ca.service.server.off('secureConnection', count);
      await p.close();
    }
  });

  it('reports refusals with status and code, and carries Retry-After', async () => {
    const limited = await startTestCa({ ratePerSecond: 1, burst: 1 });
    await writeFile(bundleFile, limited.rootPem);
    const p = provider({ url: limited.url });
    try {
      await writeFile(tokenFile, 'not-the-right-token-000000');
      // The token file is read per request (kubelet rotates projected tokens on disk).
      await assert.rejects(p.issue(await workloadCsr(WEB), WEB), (err: unknown) => {
        assert.ok(err instanceof CaUnavailableError);
        assert.equal(err.status, 401);
        assert.match(err.message, /bad_token/);
        return true;
      });
      await writeFile(tokenFile, TOKENS['node-a']);
      await assert.rejects(p.issue(await workloadCsr(WEB), WEB), (err: unknown) => {
        assert.ok(err instanceof CaUnavailableError);
        assert.equal(err.status, 429);
        assert.ok((err.retryAfterMs ?? 0) >= 1000);
        return true;
      });
    } finally {
      await p.close();
      await limited.close();
      await writeFile(bundleFile, ca.rootPem);
    }
  });

  it('fails with a clear error when the CA is unreachable or its certificate is not trusted', async () => {
    const p = provider({ url: 'https://127.0.0.1:1' });
    try {
      await assert.rejects(p.issue(await workloadCsr(WEB), WEB), /cannot reach the CA at https:\/\/127.0.0.1:1/);
    } finally {
      await p.close();
    }
    const other = await startTestCa();
    const q = provider({ url: other.url });
    try {
      await assert.rejects(q.issue(await workloadCsr(WEB), WEB), (err: unknown) => err instanceof CaUnavailableError && /cannot reach/.test(err.message));
    } finally {
      await q.close();
      await other.close();
    }
  });

  it('follows a root rotation: learns the new root before it signs, and still reaches the CA after', async () => {
    const p = provider({ bundlePollMs: 100 });
    const seen: TrustBundle[] = [];
    const stop = p.watchBundle!((b) => seen.push(b));
    try {
      const fp = (pem: string) => new X509Certificate(pem).fingerprint256;
      const waitSeen = async (pred: (b: TrustBundle) => boolean) => {
        const deadline = Date.now() + 5_000;
        while (!seen.some(pred)) {
          if (Date.now() > deadline) throw new Error(`bundle not seen; saw ${seen.length}`);
          await new Promise((r) => setTimeout(r, 20));
        }
      };
      await waitSeen((b) => b.pem === ca.rootPem);
      const prepared = await rotateRoot(ca.store, 'prepare');
      const next = prepared.next!.certPem;
      await waitSeen((b) => b.pem === ca.rootPem + next && b.signingFingerprint === fp(ca.rootPem));
      await rotateRoot(ca.store, 'activate');
      await waitSeen((b) => b.signingFingerprint === fp(next));
      // The bundle file still holds only the old root; the CA now serves a certificate from the new
      // one, which the client learned from the CA during prepare. Dropping the CA's connections makes
      // the client verify that certificate on a new one.
      ca.service.server.closeAllConnections();
      const issued = await p.issue(await workloadCsr(WEB), WEB);
      assert.ok(new X509Certificate(issued.certChainPem).verify(new X509Certificate(next).publicKey));
      await rotateRoot(ca.store, 'finish');
      await waitSeen((b) => b.pem === next);
    } finally {
      stop();
      await p.close();
    }
  });
});
