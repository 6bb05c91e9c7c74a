import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import net from 'node:net';
import { Readable } from 'node:stream';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { rotateRoot } from '../../src/identity/roots.ts';
import { caClient, customCsr, DB, leafOf, postCsr, startTestCa, TD, type TestCa, TOKENS, WEB, workloadCsr } from '../support/ca.ts';
import { eventually } from '../support/wait.ts';

describe('CA service', () => {
  let ca: TestCa;
  let client: ReturnType<typeof caClient>;
  before(async () => {
    ca = await startTestCa();
    client = caClient(ca.rootPem);
  });
  after(async () => {
    await client.close();
    await ca.close();
  });

  const refused = async (a: Promise<{ status: number; body: any }>, status: number, code: string, message?: RegExp) => {
    const r = await a;
    assert.equal(r.status, status, JSON.stringify(r.body));
    assert.equal(r.body.error.code, code);
    if (message) assert.match(r.body.error.message, message);
  };

  it('signs a CSR for a workload on the token holder\'s node: one SPIFFE SAN, client and server auth, the root\'s chain', async () => {
    const r = await postCsr(ca.url, client, { token: TOKENS['node-a'], csr: await workloadCsr(WEB) });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.spiffeId, WEB);
    const leaf = leafOf(r.body.certificateChain);
    const root = new X509Certificate(ca.rootPem);
    assert.equal(leaf.subjectAltName, `URI:${WEB}`);
    assert.equal(leaf.ca, false);
    assert.ok(leaf.checkIssued(root) && leaf.verify(root.publicKey));
    assert.deepEqual(leaf.keyUsage?.sort(), ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    const life = Date.parse(leaf.validTo) - Date.now();
    assert.ok(Math.abs(life - 3_600_000) < 5_000, `valid for ${life} ms more`);
    assert.equal(r.body.trustBundle, ca.rootPem);
    assert.equal(r.body.signingRoot, root.fingerprint256);
  });

  it('refuses a CSR for a workload that runs on another node', async () => {
    await refused(postCsr(ca.url, client, { token: TOKENS['node-a'], csr: await workloadCsr(DB) }), 403, 'identity_not_allowed', /node-a.*runs no pod.*sa\/db/);
    await refused(postCsr(ca.url, client, { token: TOKENS['node-b'], csr: await workloadCsr(WEB) }), 403, 'identity_not_allowed');
    await refused(postCsr(ca.url, client, { token: TOKENS['node-a'], csr: await workloadCsr(`spiffe://${TD}/ns/shop/sa/ghost`) }), 403, 'identity_not_allowed');
  });

  it('refuses CSRs that ask for more than one SPIFFE ID of its trust domain', async () => {
    const token = TOKENS['node-a'];
    await refused(postCsr(ca.url, client, { token, csr: customCsr({ sans: [{ type: 6, value: WEB }, { type: 6, value: DB }] }) }), 400, 'bad_csr', /exactly one SAN/);
    await refused(postCsr(ca.url, client, { token, csr: customCsr({ sans: [{ type: 6, value: WEB }, { type: 2, value: 'evil.example' }] }) }), 400, 'bad_csr', /exactly one SAN/);
    await refused(postCsr(ca.url, client, { token, csr: customCsr({ sans: [{ type: 2, value: 'web.shop' }] }) }), 400, 'bad_csr', /SPIFFE URI/);
    await refused(postCsr(ca.url, client, { token, csr: await workloadCsr('spiffe://other.domain/ns/shop/sa/web') }), 400, 'bad_csr', /trust domain other.domain/);
    await refused(postCsr(ca.url, client, { token, csr: customCsr({ sans: [{ type: 6, value: WEB }], extensions: [{ name: 'basicConstraints', cA: true }] }) }), 400, 'bad_csr', /CA:true/);
    await refused(postCsr(ca.url, client, { token, csr: customCsr({ sans: [{ type: 6, value: WEB }], bits: 1024 }) }), 400, 'bad_csr', /2048 to 4096 bits \(got 1024\)/);
    await refused(postCsr(ca.url, client, { token, csr: customCsr({ sans: [{ type: 6, value: WEB }], extensions: [{ name: 'nsCertType', client: true }] }) }), 400, 'bad_csr', /nsCertType/);
  });

  it('refuses a CSR whose signature does not match its key', async () => {
    const good = await workloadCsr(WEB);
    // Flip one byte inside the base64 body near the end (the signature).
    const lines = good.trim().split('\n');
    const i = lines.length - 3;
    const line = lines[i]!;
    lines[i] = line.slice(0, 10) + (line[10] === 'A' ? 'B' : 'A') + line.slice(11);
    await refused(postCsr(ca.url, client, { token: TOKENS['node-a'], csr: lines.join('\n') }), 400, 'bad_csr');
  });

  it('refuses missing, malformed and forged tokens before looking at the CSR', async () => {
    const csr = await workloadCsr(WEB);
    await refused(postCsr(ca.url, client, { csr }), 401, 'bad_token', /no Authorization header/);
    await refused(postCsr(ca.url, client, { token: 'has spaces in it', csr }), 401, 'bad_token', /not "Bearer <token>"/);
    await refused(postCsr(ca.url, client, { token: `${TOKENS['node-a']}x`, csr }), 401, 'bad_token', /unknown token/);
    await refused(postCsr(ca.url, client, { token: 'forged-token-0123456789', csr: 'garbage' }), 401, 'bad_token');
  });

  it('refuses garbage, wrong shapes and oversized bodies with the status that says so', async () => {
    const token = TOKENS['node-a'];
    await refused(postCsr(ca.url, client, { token, body: Buffer.from([0, 159, 146, 150, 255, 1, 2]) }), 400, 'bad_request', /not JSON/);
    await refused(postCsr(ca.url, client, { token, body: '{"csr": 42}' }), 400, 'bad_request', /\{"csr": "<PEM>"\}/);
    await refused(postCsr(ca.url, client, { token, csr: 'not a pem at all' }), 400, 'bad_csr', /not a valid PKCS#10/);
    await refused(postCsr(ca.url, client, { token, csr: '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----' }), 400, 'bad_csr');
    await refused(postCsr(ca.url, client, { token, body: 'x'.repeat(20_000) }), 413, 'body_too_large');
    await refused(postCsr(ca.url, client, { token, csr: await workloadCsr(WEB), contentType: 'text/plain' }), 415, 'bad_request');
    await refused(postCsr(ca.url, client, { token, method: 'PUT', csr: 'x' }), 405, 'bad_request');
    await refused(postCsr(ca.url, client, { token, path: '/v1/other', csr: 'x' }), 404, 'bad_request');
  });

  it('refuses a body that grows past the limit while streaming, without a declared length', async () => {
    async function* chunks() {
      for (let i = 0; i < 40; i++) yield Buffer.alloc(1024, 0x41);
    }
    const res = await request(`${ca.url}/v1/certificates`, {
      method: 'POST', dispatcher: client, headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKENS['node-a']}` },
      body: Readable.from(chunks()),
    }).catch((err: Error) => err);
    // Either the 413 arrives, or the CA closed the connection mid-upload; never a certificate.
    if (res instanceof Error) {
      assert.match(String((res as NodeJS.ErrnoException).code), /UND_ERR_SOCKET|EPIPE|ECONNRESET/, res.message);
      return;
    }
    assert.equal(res.statusCode, 413);
    assert.equal(((await res.body.json()) as any).error.code, 'body_too_large');
  });

  it('keeps serving others while one client floods it with garbage, and rate-limits the flooder', async () => {
    const flooder = caClient(ca.rootPem, '127.0.0.2');
    const honest = caClient(ca.rootPem, '127.0.0.3');
    const limited = await startTestCa({ ratePerSecond: 5, burst: 10 });
    const lFlooder = caClient(limited.rootPem, '127.0.0.2');
    const lHonest = caClient(limited.rootPem, '127.0.0.3');
    try {
      // Raw bytes at the TLS port: a TLS header announcing a record that never comes, and plain HTTP.
      const port = Number(new URL(limited.url).port);
      const raw = Array.from({ length: 20 }, (_, i) => net.connect(port, '127.0.0.1', function (this: net.Socket) {
        this.write(i % 2 ? '\x16\x03\x01garbage garbage\r\n' : 'GET / HTTP/1.1\r\n\r\n');
      }).on('error', () => undefined));
      const tlsGarbage = await new Promise<string>((resolve) => {
        const s = tls.connect({ port: Number(new URL(limited.url).port), host: '127.0.0.1', ca: limited.rootPem }, () => s.write('NOT HTTP AT ALL\r\n\r\n'));
        let got = '';
        s.on('data', (d) => { got += d.toString(); });
        s.on('error', () => resolve(got));
        s.on('close', () => resolve(got));
      });
      assert.match(tlsGarbage, /^HTTP\/1.1 400/);

      const floodStarted = performance.now();
      const floodAnswers = Promise.all(Array.from({ length: 60 }, () => postCsr(limited.url, lFlooder, { token: 'forged-token-0123456789', body: 'garbage' })));
      const honestAnswers = Promise.all(Array.from({ length: 5 }, async () => postCsr(limited.url, lHonest, { token: TOKENS['node-a'], csr: await workloadCsr(WEB) })));
      const flood = await floodAnswers;
      const floodSeconds = (performance.now() - floodStarted) / 1000;
      const good = await honestAnswers;
      assert.deepEqual(good.map((r) => r.status), [200, 200, 200, 200, 200], 'the honest client is served');
      const statuses = flood.map((r) => r.status);
      // A token bucket: the burst, plus what 5/s refills while the flood lasts (longer on a busy machine).
      const allowed = 10 + Math.ceil(5 * floodSeconds);
      assert.ok(statuses.filter((s) => s === 401).length <= allowed, `at most the burst (10) + ${allowed - 10} refilled reach authentication in ${floodSeconds.toFixed(2)} s: ${statuses}`);
      const limitedAnswer = flood.find((r) => r.status === 429);
      assert.ok(limitedAnswer, 'the flooder is rate limited');
      assert.equal(limitedAnswer.body.error.code, 'rate_limited');
      assert.ok(Number(limitedAnswer.headers['retry-after']) >= 1);
      assert.ok(limited.service.stats.refused.rate_limited! >= 40);

      // The unlimited CA also survives the same garbage and still signs.
      await Promise.all(Array.from({ length: 50 }, () => postCsr(ca.url, flooder, { token: TOKENS['node-a'], body: '\u0000\u0001garbage' })));
      const after = await postCsr(ca.url, honest, { token: TOKENS['node-a'], csr: await workloadCsr(WEB) });
      assert.equal(after.status, 200);
      for (const s of raw) s.destroy();
    } finally {
      await Promise.all([flooder.close(), honest.close(), lFlooder.close(), lHonest.close()]);
      await limited.close();
    }
  });

  it('publishes the trust bundle and follows a root rotation in its store', async () => {
    const bundle = async (c = client) => {
      const res = await request(`${ca.url}/v1/trust-bundle`, { dispatcher: c });
      return (await res.body.json()) as { trustBundle: string; signingRoot: string };
    };
    const before = await bundle();
    assert.equal(before.trustBundle, ca.rootPem);

    const prepared = await rotateRoot(ca.store, 'prepare');
    const next = prepared.next!.certPem;
    await waitFor(async () => (await bundle()).trustBundle === ca.rootPem + next);
    assert.equal((await bundle()).signingRoot, before.signingRoot, 'the old root still signs after prepare');

    await rotateRoot(ca.store, 'activate');
    // After activation the CA's own serving certificate comes from the new root: a client that
    // trusts only the new root can reach it.
    const nextOnly = caClient(next);
    try {
      await waitFor(async () => (await bundle(nextOnly).catch(() => undefined))?.signingRoot === new X509Certificate(next).fingerprint256);
      const r = await postCsr(ca.url, nextOnly, { token: TOKENS['node-a'], csr: await workloadCsr(WEB) });
      assert.equal(r.status, 200);
      assert.ok(leafOf(r.body.certificateChain).verify(new X509Certificate(next).publicKey), 'signed by the new root');
      assert.equal(r.body.trustBundle, ca.rootPem + next, 'both roots trusted until finish');
      await rotateRoot(ca.store, 'finish');
      await waitFor(async () => (await bundle(nextOnly)).trustBundle === next);
    } finally {
      await nextOnly.close();
    }
  });
});

const waitFor = async (cond: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> => { await eventually('the condition', cond, timeoutMs); };
