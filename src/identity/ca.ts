// The certificate authority: a root kept on disk (local mode) that signs workload CSRs.
// Keys come from Node's crypto (native, fast); node-forge builds and signs the X.509 structures.
import { generateKeyPair, randomBytes, X509Certificate } from 'node:crypto';
import { mkdir, readFile, writeFile, access } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import forge from 'node-forge';
import { CaError } from '../errors.ts';
import { assertTrustDomain, parseWorkloadId } from './spiffe.ts';

const generateKeyPairAsync = promisify(generateKeyPair);

export interface RootCa {
  keyPem: string;
  certPem: string;
}

/** RSA-2048 keys, PKCS#1 PEM (the form node-forge reads). RSA because forge's X.509 layer signs with RSA. */
export async function generateRsaKey(): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const { privateKey, publicKey } = await generateKeyPairAsync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive INTEGER
  return bytes.toString('hex');
}

export async function createRootCa(opts: { trustDomain: string; validityDays?: number; now?: Date }): Promise<RootCa> {
  assertTrustDomain(opts.trustDomain);
  const now = opts.now ?? new Date();
  const { privateKeyPem } = await generateRsaKey();
  const key = forge.pki.privateKeyFromPem(privateKeyPem);
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  cert.serialNumber = serialNumber();
  cert.validity.notBefore = new Date(now.getTime() - 5 * 60_000);
  cert.validity.notAfter = new Date(now.getTime() + (opts.validityDays ?? 3650) * 86_400_000);
  const name = [{ name: 'organizationName', value: 'meshlet' }, { name: 'commonName', value: `meshlet root ${opts.trustDomain}` }];
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectAltName', altNames: [{ type: 6, value: `spiffe://${opts.trustDomain}` }] },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(key, forge.md.sha256.create());
  return { keyPem: privateKeyPem, certPem: forge.pki.certificateToPem(cert) };
}

const KEY_FILE = 'ca.key';
const CERT_FILE = 'ca.crt';

/** Writes a new root into DIR; refuses to overwrite an existing one (losing a root breaks the mesh). */
export async function writeCaDir(dir: string, root: RootCa): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  try {
    await access(join(dir, KEY_FILE));
    throw new CaError(`${join(dir, KEY_FILE)} already exists; refusing to overwrite an existing root`);
  } catch (err) {
    if (err instanceof CaError) throw err;
  }
  await writeFile(join(dir, KEY_FILE), root.keyPem, { mode: 0o600, flag: 'wx' });
  await writeFile(join(dir, CERT_FILE), root.certPem, { mode: 0o644, flag: 'wx' });
}

export async function loadCaDir(dir: string): Promise<RootCa> {
  let keyPem: string;
  let certPem: string;
  try {
    keyPem = await readFile(join(dir, KEY_FILE), 'utf8');
    certPem = await readFile(join(dir, CERT_FILE), 'utf8');
  } catch (err) {
    throw new CaError(`cannot read the root CA from ${dir} (create one with \`meshlet ca init --out ${dir}\`): ${(err as Error).message}`);
  }
  try {
    const cert = new X509Certificate(certPem);
    if (!cert.ca) throw new Error('certificate is not a CA');
    forge.pki.privateKeyFromPem(keyPem);
  } catch (err) {
    throw new CaError(`root CA in ${dir} is unusable: ${(err as Error).message}`);
  }
  return { keyPem, certPem };
}

/** Builds a CSR for one SPIFFE ID, signed by the workload's own key. */
export function createCsr(privateKeyPem: string, spiffeId: string): string {
  const key = forge.pki.privateKeyFromPem(privateKeyPem);
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.setRsaPublicKey(key.n, key.e);
  csr.setSubject([{ name: 'organizationName', value: 'meshlet' }]);
  csr.setAttributes([{
    name: 'extensionRequest',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 6, value: spiffeId }] }],
  }]);
  csr.sign(key, forge.md.sha256.create());
  return forge.pki.certificationRequestToPem(csr);
}

export interface SignOptions {
  trustDomain: string;
  ttlMs: number;
  now?: Date;
}

/** The SPIFFE URI SANs a CSR asks for. */
export function csrUriSans(csr: forge.pki.CertificateSigningRequest): string[] {
  const ext = (csr.getAttribute({ name: 'extensionRequest' }) as { extensions?: Array<{ name: string; altNames?: Array<{ type: number; value: string }> }> } | null)?.extensions;
  const san = ext?.find((e) => e.name === 'subjectAltName');
  return (san?.altNames ?? []).filter((a) => a.type === 6).map((a) => a.value);
}

/**
 * Signs a workload CSR. The CSR must prove possession of its key, carry exactly one SAN (a SPIFFE URI
 * in this trust domain) and use an RSA key of at least 2048 bits. Returns the leaf certificate PEM.
 */
export function signWorkloadCsr(root: RootCa, csrPem: string, opts: SignOptions): { certPem: string; spiffeId: string } {
  let csr: forge.pki.CertificateSigningRequest;
  try {
    csr = forge.pki.certificationRequestFromPem(csrPem);
  } catch (err) {
    throw new CaError(`CSR is not a valid PKCS#10 request: ${(err as Error).message}`);
  }
  if (!csr.verify()) throw new CaError('CSR signature does not verify');
  const publicKey = csr.publicKey as forge.pki.rsa.PublicKey | null;
  if (!publicKey || typeof publicKey.n?.bitLength !== 'function' || publicKey.n.bitLength() < 2048) {
    throw new CaError('CSR key must be RSA with at least 2048 bits');
  }
  const ext = (csr.getAttribute({ name: 'extensionRequest' }) as { extensions?: Array<{ name: string; altNames?: unknown[] }> } | null)?.extensions ?? [];
  const sanExt = ext.find((e) => e.name === 'subjectAltName');
  const altNames = sanExt?.altNames ?? [];
  const uris = csrUriSans(csr);
  if (altNames.length !== 1 || uris.length !== 1) throw new CaError(`CSR must carry exactly one SAN, a SPIFFE URI (found ${altNames.length})`);
  const spiffeId = uris[0] as string;
  parseWorkloadId(spiffeId, opts.trustDomain);
  if (ext.some((e) => e.name === 'basicConstraints')) throw new CaError('CSR may not request basic constraints');

  const caKey = forge.pki.privateKeyFromPem(root.keyPem);
  const caCert = forge.pki.certificateFromPem(root.certPem);
  const now = opts.now ?? new Date();
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  cert.serialNumber = serialNumber();
  // A little backdating absorbs clock skew between nodes.
  cert.validity.notBefore = new Date(now.getTime() - 60_000);
  cert.validity.notAfter = new Date(now.getTime() + opts.ttlMs);
  cert.setSubject([{ name: 'organizationName', value: 'meshlet' }]);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
    { name: 'subjectAltName', altNames: [{ type: 6, value: spiffeId }], critical: true },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(caKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), spiffeId };
}
