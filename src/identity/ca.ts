// X.509 for meshlet's CA: roots, workload CSRs, and signing them. node-forge builds and parses the
// structures (CSRs, certificates, extensions); Node's crypto generates the keys and computes every
// signature natively, which is ~10x cheaper than forge's JavaScript RSA and keeps the CA's event
// loop free for other clients while it signs.
import { createPrivateKey, createPublicKey, generateKeyPair, type KeyObject, randomBytes, sign as cryptoSign, verify as cryptoVerify, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { promisify } from 'node:util';
import forge from 'node-forge';
import { BadCsrError, CaError } from '../errors.ts';
import { assertTrustDomain, parseSpiffeUri, parseWorkloadId } from './spiffe.ts';

const generateKeyPairAsync = promisify(generateKeyPair);

export interface RootCa {
  keyPem: string;
  certPem: string;
}

/** RSA-2048 keys, PKCS#1 PEM (the form node-forge reads). RSA because forge's X.509 layer speaks RSA. */
export async function generateRsaKey(): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const { privateKey, publicKey } = await generateKeyPairAsync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs1', format: 'pem' },
  });
  return { privateKeyPem: privateKey, publicKeyPem: publicKey };
}

/**
 * Signs a forge certificate or CSR with Node's crypto. forge's `sign(key, md)` feeds the DER of the
 * to-be-signed structure to `md.update` and then calls `key.sign(md)`: a digest that only records
 * the bytes and a key that signs them natively give the same structure, signed in C.
 */
function nativeSign(target: { sign(key: never, md: never): void }, key: KeyObject): void {
  const chunks: string[] = [];
  const md = { algorithm: 'sha256', update(bytes: string) { chunks.push(bytes); return md; } };
  const signer = { sign: () => cryptoSign('sha256', Buffer.from(chunks.join(''), 'binary'), key).toString('binary') };
  target.sign(signer as never, md as never);
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive INTEGER
  return bytes.toString('hex');
}

export async function createRootCa(opts: { trustDomain: string; validityDays?: number; now?: Date }): Promise<RootCa> {
  assertTrustDomain(opts.trustDomain);
  const now = opts.now ?? new Date();
  const { privateKeyPem, publicKeyPem } = await generateRsaKey();
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKeyPem);
  cert.serialNumber = serialNumber();
  cert.validity.notBefore = new Date(now.getTime() - 5 * 60_000);
  cert.validity.notAfter = new Date(now.getTime() + (opts.validityDays ?? 3650) * 86_400_000);
  // The serial in the name tells two roots of one trust domain apart during a rotation.
  const name = [{ name: 'organizationName', value: 'meshlet' }, { name: 'commonName', value: `meshlet root ${opts.trustDomain} ${cert.serialNumber.slice(0, 8)}` }];
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectAltName', altNames: [{ type: 6, value: `spiffe://${opts.trustDomain}` }] },
    { name: 'subjectKeyIdentifier' },
  ]);
  nativeSign(cert, createPrivateKey(privateKeyPem));
  return { keyPem: privateKeyPem, certPem: forge.pki.certificateToPem(cert) };
}

/** The trust domain a root speaks for: its `spiffe://<td>` URI SAN. */
export function rootTrustDomain(certPem: string): string {
  const cert = new X509Certificate(certPem);
  const uri = cert.subjectAltName?.split(', ').find((s) => s.startsWith('URI:spiffe://'));
  if (!uri) throw new CaError('root certificate carries no spiffe://<trust-domain> SAN');
  return parseSpiffeUri(uri.slice(4)).trustDomain;
}

/** Builds a CSR for one SPIFFE ID, signed by the workload's own key. */
export function createCsr(privateKeyPem: string, spiffeId: string): string {
  const key = createPrivateKey(privateKeyPem);
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.publicKeyFromPem(createPublicKey(key).export({ type: 'spki', format: 'pem' }).toString());
  csr.setSubject([{ name: 'organizationName', value: 'meshlet' }]);
  csr.setAttributes([{
    name: 'extensionRequest',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 6, value: spiffeId }] }],
  }]);
  nativeSign(csr, key);
  return forge.pki.certificationRequestToPem(csr);
}

export interface SignOptions {
  trustDomain: string;
  ttlMs: number;
  now?: Date;
}

type RequestedExtension = { name?: string; id?: string; cA?: boolean; altNames?: Array<{ type: number; value?: string }> };

function requestedExtensions(csr: forge.pki.CertificateSigningRequest): RequestedExtension[] {
  const attr = csr.getAttribute({ name: 'extensionRequest' }) as { extensions?: RequestedExtension[] } | null;
  return attr?.extensions ?? [];
}

/** The SPIFFE URI SANs a CSR asks for. */
export function csrUriSans(csr: forge.pki.CertificateSigningRequest): string[] {
  const san = requestedExtensions(csr).find((e) => e.name === 'subjectAltName');
  return (san?.altNames ?? []).filter((a) => a.type === 6).map((a) => a.value ?? '');
}

// Extensions a workload may ask for; the CA sets its own key usages whatever the CSR says.
const TOLERATED_EXTENSIONS = new Set(['subjectAltName', 'keyUsage', 'extKeyUsage', 'basicConstraints']);
const MIN_RSA_BITS = 2048;
// Verifying a CSR is a public-key operation in forge's JavaScript; a huge modulus would stall the CA.
const MAX_RSA_BITS = 4096;
const MAX_CSR_PEM = 8192;

const SIGNATURE_HASHES: Record<string, string> = {
  [forge.pki.oids.sha256WithRSAEncryption as string]: 'sha256',
  [forge.pki.oids.sha384WithRSAEncryption as string]: 'sha384',
  [forge.pki.oids.sha512WithRSAEncryption as string]: 'sha512',
};

/**
 * Proof of possession, checked natively: the DER of the request info as parsed, the signature, the
 * request's own key. (forge's verify does the same in JavaScript at a third of the speed.)
 */
function verifyCsrSignature(csr: forge.pki.CertificateSigningRequest, publicKey: forge.pki.rsa.PublicKey): boolean {
  const parsed = csr as unknown as { signatureOid?: string; certificationRequestInfo?: forge.asn1.Asn1; signature?: string };
  const hash = SIGNATURE_HASHES[parsed.signatureOid ?? ''];
  if (!hash || !parsed.certificationRequestInfo || typeof parsed.signature !== 'string') return false;
  try {
    const info = Buffer.from(forge.asn1.toDer(parsed.certificationRequestInfo).getBytes(), 'binary');
    const key = createPublicKey(forge.pki.publicKeyToPem(publicKey));
    return cryptoVerify(hash, info, key, Buffer.from(parsed.signature, 'binary'));
  } catch {
    return false;
  }
}

/** The checks every workload CSR must pass, before any authorization: throws BadCsrError. */
export function parseWorkloadCsr(csrPem: string, trustDomain: string): { spiffeId: string; publicKey: forge.pki.rsa.PublicKey } {
  if (typeof csrPem !== 'string' || csrPem.length > MAX_CSR_PEM) throw new BadCsrError(`CSR must be a PEM string of at most ${MAX_CSR_PEM} bytes`);
  let csr: forge.pki.CertificateSigningRequest;
  try {
    csr = forge.pki.certificationRequestFromPem(csrPem);
  } catch (err) {
    throw new BadCsrError(`CSR is not a valid PKCS#10 request: ${(err as Error).message}`);
  }
  const publicKey = csr.publicKey as forge.pki.rsa.PublicKey | null;
  const bits = publicKey && typeof publicKey.n?.bitLength === 'function' ? publicKey.n.bitLength() : 0;
  if (bits < MIN_RSA_BITS || bits > MAX_RSA_BITS) throw new BadCsrError(`CSR key must be RSA with ${MIN_RSA_BITS} to ${MAX_RSA_BITS} bits (got ${bits || 'no RSA key'})`);
  if (!verifyCsrSignature(csr, publicKey as forge.pki.rsa.PublicKey)) {
    throw new BadCsrError('CSR signature does not verify (the requester must prove possession of the key)');
  }
  const ext = requestedExtensions(csr);
  const basic = ext.find((e) => e.name === 'basicConstraints');
  if (basic?.cA) throw new BadCsrError('CSR requests a CA certificate (basicConstraints CA:true)');
  const foreign = ext.filter((e) => !e.name || !TOLERATED_EXTENSIONS.has(e.name));
  if (foreign.length > 0) throw new BadCsrError(`CSR requests extensions the CA does not grant: ${foreign.map((e) => e.name ?? e.id).join(', ')}`);
  const altNames = ext.find((e) => e.name === 'subjectAltName')?.altNames ?? [];
  const uris = csrUriSans(csr);
  if (altNames.length !== 1 || uris.length !== 1) {
    throw new BadCsrError(`CSR must carry exactly one SAN, a SPIFFE URI (found ${altNames.length} SANs, ${uris.length} URIs)`);
  }
  const spiffeId = uris[0] as string;
  try {
    parseWorkloadId(spiffeId, trustDomain);
  } catch (err) {
    throw new BadCsrError((err as Error).message);
  }
  return { spiffeId, publicKey: publicKey as forge.pki.rsa.PublicKey };
}

/**
 * One root, parsed once: the CA signs thousands of certificates with the same key and issuer, so
 * neither the key nor the root certificate is re-read per request.
 */
export class CaSigner {
  readonly root: RootCa;
  readonly trustDomain: string;
  readonly #key: KeyObject;
  readonly #issuer: forge.pki.CertificateField[];
  readonly #authorityKeyId: string;

  constructor(root: RootCa) {
    this.root = root;
    try {
      this.#key = createPrivateKey(root.keyPem);
      const caCert = forge.pki.certificateFromPem(root.certPem);
      this.#issuer = caCert.subject.attributes;
      this.#authorityKeyId = caCert.generateSubjectKeyIdentifier().getBytes();
    } catch (err) {
      throw new CaError(`root CA is unusable: ${(err as Error).message}`);
    }
    this.trustDomain = rootTrustDomain(root.certPem);
  }

  /** Signs a workload CSR that passed `parseWorkloadCsr`. Returns the leaf certificate PEM. */
  signWorkload(parsed: { spiffeId: string; publicKey: forge.pki.rsa.PublicKey }, opts: { ttlMs: number; now?: Date }): string {
    return this.#sign(parsed.publicKey, opts, [
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 6, value: parsed.spiffeId }], critical: true },
    ]);
  }

  /** A serving certificate for the CA service itself: DNS names and IPs, server auth only. */
  signServing(publicKeyPem: string, opts: { names: string[]; ttlMs: number; now?: Date }): string {
    const altNames = opts.names.map((n) => (isIP(n) ? { type: 7, ip: n } : { type: 2, value: n }));
    return this.#sign(forge.pki.publicKeyFromPem(publicKeyPem) as forge.pki.rsa.PublicKey, opts, [
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames },
    ]);
  }

  #sign(publicKey: forge.pki.rsa.PublicKey, opts: { ttlMs: number; now?: Date }, extensions: object[]): string {
    const now = opts.now ?? new Date();
    const cert = forge.pki.createCertificate();
    cert.publicKey = publicKey;
    cert.serialNumber = serialNumber();
    // Backdating absorbs clock skew between nodes; capped so that short test TTLs keep their meaning.
    cert.validity.notBefore = new Date(now.getTime() - Math.min(60_000, opts.ttlMs / 4));
    cert.validity.notAfter = new Date(now.getTime() + opts.ttlMs);
    cert.setSubject([{ name: 'organizationName', value: 'meshlet' }]);
    cert.setIssuer(this.#issuer);
    cert.setExtensions([
      { name: 'basicConstraints', cA: false, critical: true },
      ...extensions,
      { name: 'subjectKeyIdentifier' },
      { name: 'authorityKeyIdentifier', keyIdentifier: this.#authorityKeyId },
    ]);
    nativeSign(cert, this.#key);
    return forge.pki.certificateToPem(cert);
  }
}

/** Checks and signs a workload CSR in one call (local mode, tests, benchmarks). */
export function signWorkloadCsr(root: RootCa | CaSigner, csrPem: string, opts: SignOptions): { certPem: string; spiffeId: string } {
  const signer = root instanceof CaSigner ? root : new CaSigner(root);
  const parsed = parseWorkloadCsr(csrPem, opts.trustDomain);
  return { certPem: signer.signWorkload(parsed, opts), spiffeId: parsed.spiffeId };
}
