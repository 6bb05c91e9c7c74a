// A CA service on loopback for tests: a temporary root store, tokens file and workloads file, and a
// way to build CSRs the real agent never would (two SANs, CA:true, weak keys).
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import forge from 'node-forge';
import pino from 'pino';
import { Agent, request } from 'undici';
import { stringify } from 'yaml';
import { createLocalAuthorizer } from '../../src/ca/authorizer.ts';
import { CaService, type CaServiceOptions } from '../../src/ca/server.ts';
import { createCsr, generateRsaKey } from '../../src/identity/ca.ts';
import { DirRootStore, ensureRoot } from '../../src/identity/roots.ts';

export const TD = 'td.test';
export const TOKENS = { 'node-a': 'token-for-node-a-0123456789', 'node-b': 'token-for-node-b-0123456789' } as const;
export const WORKLOADS = {
  trustDomain: TD,
  nodes: [{ name: 'node-a', ip: '10.0.0.1' }, { name: 'node-b', ip: '10.0.0.2' }],
  workloads: [
    { name: 'web', namespace: 'shop', serviceAccount: 'web', ip: '10.1.0.10', node: 'node-a', captured: true },
    { name: 'db', namespace: 'shop', serviceAccount: 'db', ip: '10.1.0.20', node: 'node-b', captured: true },
  ],
};
export const WEB = `spiffe://${TD}/ns/shop/sa/web`;
export const DB = `spiffe://${TD}/ns/shop/sa/db`;

export interface TestCa {
  service: CaService;
  dir: string;
  store: DirRootStore;
  url: string;
  rootPem: string;
  workloadsFile: string;
  close(): Promise<void>;
}

export async function startTestCa(overrides: Partial<CaServiceOptions> = {}): Promise<TestCa> {
  const dir = await mkdtemp(join(tmpdir(), 'meshlet-ca-test-'));
  const store = new DirRootStore(join(dir, 'root'));
  const { set } = await ensureRoot(store, TD);
  const tokensFile = join(dir, 'tokens.yaml');
  const workloadsFile = join(dir, 'workloads.yaml');
  await writeFile(tokensFile, stringify({ tokens: Object.entries(TOKENS).map(([node, token]) => ({ node, token })) }));
  await writeFile(workloadsFile, stringify(WORKLOADS));
  const log = pino({ level: 'silent' });
  const service = await CaService.start({
    store, log, certTtlMs: 3_600_000, servingNames: ['localhost', '127.0.0.1'], maxBodyBytes: 16_384,
    ratePerSecond: 1000, burst: 1000, reloadMs: 100,
    authorizer: createLocalAuthorizer({ tokensFile, workloadsFile, log, pollIntervalMs: 50 }),
    ...overrides,
  });
  await service.listen(0, '127.0.0.1');
  const port = (service.server.address() as { port: number }).port;
  return {
    service, dir, store, url: `https://127.0.0.1:${port}`, rootPem: set.signing.certPem, workloadsFile,
    async close() {
      await service.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** A client that trusts `rootsPem`, optionally from a given loopback source address. */
export function caClient(rootsPem: string, localAddress?: string): Agent {
  return new Agent({ connect: { ca: rootsPem }, ...(localAddress ? { localAddress } : {}) });
}

export interface CaAnswer { status: number; body: any; headers: Record<string, string | string[] | undefined> }

export async function postCsr(url: string, dispatcher: Agent, opts: { token?: string; body?: string | Buffer; csr?: string; contentType?: string; method?: string; path?: string }): Promise<CaAnswer> {
  const headers: Record<string, string> = { 'content-type': opts.contentType ?? 'application/json' };
  if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
  const res = await request(`${url}${opts.path ?? '/v1/certificates'}`, {
    method: (opts.method ?? 'POST') as 'POST', dispatcher, headers,
    body: opts.body ?? JSON.stringify({ csr: opts.csr }),
  });
  const text = await res.body.text();
  let body: unknown = text;
  try { body = JSON.parse(text); } catch { /* keep text */ }
  return { status: res.statusCode, body, headers: res.headers };
}

export async function workloadCsr(spiffeId: string): Promise<string> {
  const { privateKeyPem } = await generateRsaKey();
  return createCsr(privateKeyPem, spiffeId);
}

/** A CSR shaped by hand (forge signs it): any SANs, extensions and key size. */
export function customCsr(opts: { sans: Array<{ type: number; value: string }>; extensions?: object[]; bits?: number }): string {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: opts.bits ?? 2048,
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
    publicKeyEncoding: { type: 'spki', format: 'pem' },
  });
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.publicKeyFromPem(publicKey);
  csr.setSubject([{ name: 'organizationName', value: 'test' }]);
  csr.setAttributes([{ name: 'extensionRequest', extensions: [{ name: 'subjectAltName', altNames: opts.sans }, ...(opts.extensions ?? [])] }]);
  csr.sign(forge.pki.privateKeyFromPem(privateKey), forge.md.sha256.create());
  return forge.pki.certificationRequestToPem(csr);
}

export function leafOf(chainPem: string): X509Certificate {
  return new X509Certificate(chainPem);
}
