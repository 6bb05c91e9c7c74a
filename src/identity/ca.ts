// X.509 for meshlet's CA: roots, workload CSRs, and signing them. node-forge builds and parses the
// ASN.1 structures (CSRs, certificates, extensions); Node's crypto generates the keys (ECDSA P-256
// by default, RSA-2048 as an option) and computes and checks every signature natively, which is
// ~10x cheaper than forge's JavaScript RSA and keeps the CA's event loop free while it signs.
// forge's certificate model holds only RSA keys, so its builders get a placeholder key and the real
// key's SubjectPublicKeyInfo and signature algorithm are put into the structure they return.
import { createHash, createPrivateKey, createPublicKey, generateKeyPair, type KeyObject, randomBytes, sign as cryptoSign, verify as cryptoVerify, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { promisify } from 'node:util';
import forge from 'node-forge';
import type { KeyAlgorithm } from '../config/common.ts';
import { BadCsrError, CaError } from '../errors.ts';
import { assertTrustDomain, parseSpiffeUri, parseWorkloadId } from './spiffe.ts';

const generateKeyPairAsync = promisify(generateKeyPair);
const { asn1 } = forge;
type Asn1 = forge.asn1.Asn1;

export interface RootCa {
  keyPem: string;
  certPem: string;
}

export type { KeyAlgorithm };

/** A key pair in PEM (PKCS#8 private, SPKI public). */
export async function generateKey(algorithm: KeyAlgorithm = 'ecdsa-p256'): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const encoding = { publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } } as const;
  // PEM encodings make both halves strings (promisify's typing knows only the KeyObject overload).
  const pair = (algorithm === 'rsa-2048'
    ? await generateKeyPairAsync('rsa', { modulusLength: 2048, ...encoding })
    : await generateKeyPairAsync('ec', { namedCurve: 'prime256v1', ...encoding })) as unknown as { privateKey: string; publicKey: string };
  return { privateKeyPem: pair.privateKey, publicKeyPem: pair.publicKey };
}

/** Which of meshlet's algorithms a private key is (an RSA key of any size counts as RSA). */
export function keyAlgorithmOf(privateKeyPem: string): KeyAlgorithm {
  return createPrivateKey(privateKeyPem).asymmetricKeyType === 'rsa' ? 'rsa-2048' : 'ecdsa-p256';
}

/** RSA-2048: the option, and the benchmarks' RSA references. */
export const generateRsaKey = () => generateKey('rsa-2048');

const OIDS = {
  sha256WithRsa: '1.2.840.113549.1.1.11', sha384WithRsa: '1.2.840.113549.1.1.12', sha512WithRsa: '1.2.840.113549.1.1.13',
  ecdsaSha256: '1.2.840.10045.4.3.2', ecdsaSha384: '1.2.840.10045.4.3.3', extensionRequest: '1.2.840.113549.1.9.14',
};
const oid = (id: string) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(id).getBytes());
const seq = (items: Asn1[]) => asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, items);
const der = (node: Asn1) => Buffer.from(asn1.toDer(node).getBytes(), 'binary');
// Bit strings kept as bytes (forge would parse an RSA key's as ASN.1); the option its types omit.
const fromDer = (bytes: Buffer) => (asn1.fromDer as unknown as (b: string, o: object) => Asn1)(bytes.toString('binary'), { decodeBitStrings: false });
/** forge builders and parsers its type definitions do not list. */
const pki = forge.pki as typeof forge.pki & {
  getTBSCertificate(cert: forge.pki.Certificate): Asn1;
  getCertificationRequestInfo(csr: forge.pki.CertificateSigningRequest): Asn1;
  certificateExtensionFromAsn1(ext: Asn1): object;
};

/** forge's builders want an RSA key; this one's SubjectPublicKeyInfo is always replaced. */
const PLACEHOLDER_KEY = forge.pki.setRsaPublicKey(new forge.jsbn.BigInteger('3'), new forge.jsbn.BigInteger('3'));

/** sha256 with the key's own kind of signature; ECDSA's AlgorithmIdentifier has no parameters (RFC 5758). */
function signatureAlgorithm(key: KeyObject): Asn1 {
  return key.asymmetricKeyType === 'rsa'
    ? seq([oid(OIDS.sha256WithRsa), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, '')])
    : seq([oid(OIDS.ecdsaSha256)]);
}

/** A to-be-signed structure signed natively: SEQUENCE { tbs, algorithm, BIT STRING signature }, as PEM. */
function signed(tbs: Asn1, key: KeyObject, type: 'CERTIFICATE' | 'CERTIFICATE REQUEST'): string {
  const signature = cryptoSign('sha256', der(tbs), key); // ECDSA: DER (r, s), as X.509 carries it
  const whole = seq([tbs, signatureAlgorithm(key), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, `\0${signature.toString('binary')}`)]);
  return forge.pem.encode({ type, body: asn1.toDer(whole).getBytes() }, { maxline: 64 });
}

/** RFC 5280's key identifier: SHA-1 of the subjectPublicKey bits of a DER SubjectPublicKeyInfo. */
function keyIdentifier(spkiDer: Buffer): string {
  const bits = (fromDer(spkiDer).value as Asn1[])[1]!.value as string;
  return createHash('sha1').update(Buffer.from(bits.slice(1), 'binary')).digest('binary');
}

const spkiDer = (key: KeyObject) => (key.type === 'private' ? createPublicKey(key) : key).export({ type: 'spki', format: 'der' });

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f; // positive INTEGER
  return bytes.toString('hex');
}

/**
 * A TBSCertificate for `publicKey`, signed by `signingKey`: forge builds it around the placeholder
 * key, then the real SubjectPublicKeyInfo, the signer's algorithm and (for a leaf) the issuer's
 * Name exactly as the root carries it go in.
 */
function tbsCertificate(f: {
  publicKey: KeyObject; signingKey: KeyObject; serial: string; notBefore: Date; notAfter: Date;
  subject: forge.pki.CertificateField[]; issuer?: Asn1; extensions: object[];
}): Asn1 {
  const spki = spkiDer(f.publicKey);
  const cert = forge.pki.createCertificate();
  cert.publicKey = PLACEHOLDER_KEY;
  cert.serialNumber = f.serial;
  cert.validity.notBefore = f.notBefore;
  cert.validity.notAfter = f.notAfter;
  cert.setSubject(f.subject);
  cert.setIssuer(f.subject);
  (cert as unknown as { siginfo: { algorithmOid: string } }).siginfo.algorithmOid = OIDS.sha256WithRsa;
  cert.setExtensions([
    ...f.extensions,
    { name: 'subjectKeyIdentifier', value: asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, keyIdentifier(spki)) },
  ]);
  const tbs = pki.getTBSCertificate(cert);
  // [version, serial, signature, issuer, validity, subject, subjectPublicKeyInfo, extensions]
  const fields = tbs.value as Asn1[];
  fields[2] = signatureAlgorithm(f.signingKey);
  if (f.issuer) fields[3] = f.issuer;
  fields[6] = fromDer(spki);
  return tbs;
}

export async function createRootCa(opts: { trustDomain: string; validityDays?: number; now?: Date; keyAlgorithm?: KeyAlgorithm }): Promise<RootCa> {
  assertTrustDomain(opts.trustDomain);
  const now = opts.now ?? new Date();
  const { privateKeyPem } = await generateKey(opts.keyAlgorithm);
  const key = createPrivateKey(privateKeyPem);
  const serial = serialNumber();
  const tbs = tbsCertificate({
    publicKey: key, signingKey: key, serial,
    notBefore: new Date(now.getTime() - 5 * 60_000), notAfter: new Date(now.getTime() + (opts.validityDays ?? 3650) * 86_400_000),
    // The serial in the name tells two roots of one trust domain apart during a rotation.
    subject: [{ name: 'organizationName', value: 'meshlet' }, { name: 'commonName', value: `meshlet root ${opts.trustDomain} ${serial.slice(0, 8)}` }],
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
      { name: 'subjectAltName', altNames: [{ type: 6, value: `spiffe://${opts.trustDomain}` }] },
    ],
  });
  return { keyPem: privateKeyPem, certPem: signed(tbs, key, 'CERTIFICATE') };
}

/** The trust domain a root speaks for: its `spiffe://<td>` URI SAN. */
export function rootTrustDomain(certPem: string): string {
  const cert = new X509Certificate(certPem);
  const uri = cert.subjectAltName?.split(', ').find((s) => s.startsWith('URI:spiffe://'));
  if (!uri) throw new CaError('root certificate carries no spiffe://<trust-domain> SAN');
  return parseSpiffeUri(uri.slice(4)).trustDomain;
}

/** Builds a CSR for one SPIFFE ID, signed by the workload's own key (ECDSA or RSA). */
export function createCsr(privateKeyPem: string, spiffeId: string): string {
  const key = createPrivateKey(privateKeyPem);
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = PLACEHOLDER_KEY;
  csr.setSubject([{ name: 'organizationName', value: 'meshlet' }]);
  csr.setAttributes([{
    name: 'extensionRequest',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 6, value: spiffeId }] }],
  }]);
  const info = pki.getCertificationRequestInfo(csr);
  // [version, subject, subjectPublicKeyInfo, attributes]
  (info.value as Asn1[])[2] = fromDer(spkiDer(key));
  return signed(info, key, 'CERTIFICATE REQUEST');
}

export interface SignOptions {
  trustDomain: string;
  ttlMs: number;
  now?: Date;
}

type RequestedExtension = { name?: string; id?: string; cA?: boolean; altNames?: Array<{ type: number; value?: string }> };

/** The parts of a PKCS#10 request the CA reads, from its DER (any key type). */
interface ParsedCsr {
  info: Asn1;
  publicKey: KeyObject;
  signatureOid: string;
  signature: Buffer;
  extensions: RequestedExtension[];
}

function readCsr(pem: string): ParsedCsr {
  const msg = forge.pem.decode(pem).find((m) => m.type === 'CERTIFICATE REQUEST' || m.type === 'NEW CERTIFICATE REQUEST');
  if (!msg) throw new Error('no CERTIFICATE REQUEST block');
  const [info, algorithm, signature] = fromDer(Buffer.from(msg.body, 'binary')).value as Asn1[];
  const [, , spki, attributes] = (info?.value ?? []) as Asn1[];
  if (!info || !algorithm || !signature || !spki) throw new Error('not a CertificationRequest');
  const extensions: RequestedExtension[] = [];
  for (const attr of (attributes?.value ?? []) as Asn1[]) {
    const [type, values] = attr.value as Asn1[];
    if (asn1.derToOid(type!.value as string) !== OIDS.extensionRequest) continue;
    for (const ext of ((values!.value as Asn1[])[0]!.value as Asn1[])) extensions.push(pki.certificateExtensionFromAsn1(ext) as RequestedExtension);
  }
  return {
    info,
    publicKey: createPublicKey({ key: der(spki), format: 'der', type: 'spki' }),
    signatureOid: asn1.derToOid((algorithm.value as Asn1[])[0]!.value as string),
    signature: Buffer.from((signature.value as string).slice(1), 'binary'),
    extensions,
  };
}

/** The SPIFFE URI SANs a CSR asks for. */
function csrUriSans(extensions: RequestedExtension[]): string[] {
  const san = extensions.find((e) => e.name === 'subjectAltName');
  return (san?.altNames ?? []).filter((a) => a.type === 6).map((a) => a.value ?? '');
}

// Extensions a workload may ask for; the CA sets its own key usages whatever the CSR says.
const TOLERATED_EXTENSIONS = new Set(['subjectAltName', 'keyUsage', 'extKeyUsage', 'basicConstraints']);
const MIN_RSA_BITS = 2048;
// A huge modulus would make each proof-of-possession check slow for the CA.
const MAX_RSA_BITS = 4096;
const EC_CURVES = new Set(['prime256v1', 'secp384r1']);
const MAX_CSR_PEM = 8192;

const SIGNATURE_HASHES: Record<string, string> = {
  [OIDS.sha256WithRsa]: 'sha256', [OIDS.sha384WithRsa]: 'sha384', [OIDS.sha512WithRsa]: 'sha512',
  [OIDS.ecdsaSha256]: 'sha256', [OIDS.ecdsaSha384]: 'sha384',
};

/** Why a CSR's key is not one the CA signs for, or undefined. */
function keyProblem(key: KeyObject): string | undefined {
  const d = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'rsa') {
    const bits = d.modulusLength ?? 0;
    return bits < MIN_RSA_BITS || bits > MAX_RSA_BITS ? `an RSA key must have ${MIN_RSA_BITS} to ${MAX_RSA_BITS} bits (got ${bits})` : undefined;
  }
  if (key.asymmetricKeyType === 'ec') return EC_CURVES.has(d.namedCurve ?? '') ? undefined : `an EC key must be on P-256 or P-384 (got ${d.namedCurve})`;
  return `the key must be ECDSA or RSA (got ${key.asymmetricKeyType})`;
}

/** Proof of possession, checked natively: the request info's DER, its signature, the request's own key. */
function verifyCsrSignature(csr: ParsedCsr): boolean {
  const hash = SIGNATURE_HASHES[csr.signatureOid];
  if (!hash) return false;
  const ecSignature = csr.signatureOid === OIDS.ecdsaSha256 || csr.signatureOid === OIDS.ecdsaSha384;
  if (ecSignature !== (csr.publicKey.asymmetricKeyType === 'ec')) return false;
  try {
    return cryptoVerify(hash, der(csr.info), csr.publicKey, csr.signature);
  } catch {
    return false;
  }
}

/** The checks every workload CSR must pass, before any authorization: throws BadCsrError. */
export function parseWorkloadCsr(csrPem: string, trustDomain: string): { spiffeId: string; publicKey: KeyObject } {
  if (typeof csrPem !== 'string' || csrPem.length > MAX_CSR_PEM) throw new BadCsrError(`CSR must be a PEM string of at most ${MAX_CSR_PEM} bytes`);
  let csr: ParsedCsr;
  try {
    csr = readCsr(csrPem);
  } catch (err) {
    throw new BadCsrError(`CSR is not a valid PKCS#10 request: ${(err as Error).message}`);
  }
  const problem = keyProblem(csr.publicKey);
  if (problem) throw new BadCsrError(`CSR key: ${problem}`);
  if (!verifyCsrSignature(csr)) {
    throw new BadCsrError('CSR signature does not verify (the requester must prove possession of the key)');
  }
  const ext = csr.extensions;
  const basic = ext.find((e) => e.name === 'basicConstraints');
  if (basic?.cA) throw new BadCsrError('CSR requests a CA certificate (basicConstraints CA:true)');
  const foreign = ext.filter((e) => !e.name || !TOLERATED_EXTENSIONS.has(e.name));
  if (foreign.length > 0) throw new BadCsrError(`CSR requests extensions the CA does not grant: ${foreign.map((e) => e.name ?? e.id).join(', ')}`);
  const altNames = ext.find((e) => e.name === 'subjectAltName')?.altNames ?? [];
  const uris = csrUriSans(ext);
  if (altNames.length !== 1 || uris.length !== 1) {
    throw new BadCsrError(`CSR must carry exactly one SAN, a SPIFFE URI (found ${altNames.length} SANs, ${uris.length} URIs)`);
  }
  const spiffeId = uris[0] as string;
  try {
    parseWorkloadId(spiffeId, trustDomain);
  } catch (err) {
    throw new BadCsrError((err as Error).message);
  }
  return { spiffeId, publicKey: csr.publicKey };
}

/**
 * One root, parsed once: the CA signs thousands of certificates with the same key and issuer, so
 * neither the key nor the root certificate is re-read per request.
 */
export class CaSigner {
  readonly root: RootCa;
  readonly trustDomain: string;
  readonly #key: KeyObject;
  /** The root's subject Name, as its certificate carries it: each leaf's issuer, byte for byte. */
  readonly #issuer: Asn1;
  readonly #authorityKeyId: string;

  constructor(root: RootCa) {
    this.root = root;
    try {
      this.#key = createPrivateKey(root.keyPem);
      const cert = new X509Certificate(root.certPem);
      const tbs = (fromDer(cert.raw).value as Asn1[])[0]!.value as Asn1[];
      // Version 3 certificates start with the [0] version field.
      this.#issuer = tbs[tbs[0]!.tagClass === asn1.Class.CONTEXT_SPECIFIC ? 5 : 4]!;
      this.#authorityKeyId = keyIdentifier(spkiDer(cert.publicKey));
    } catch (err) {
      throw new CaError(`root CA is unusable: ${(err as Error).message}`);
    }
    this.trustDomain = rootTrustDomain(root.certPem);
  }

  /** Signs a workload CSR that passed `parseWorkloadCsr`. Returns the leaf certificate PEM. */
  signWorkload(parsed: { spiffeId: string; publicKey: KeyObject }, opts: { ttlMs: number; now?: Date }): string {
    return this.#sign(parsed.publicKey, opts, [
      keyUsage(parsed.publicKey),
      { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 6, value: parsed.spiffeId }], critical: true },
    ]);
  }

  /** A serving certificate for the CA service itself: DNS names and IPs, server auth only. */
  signServing(publicKeyPem: string, opts: { names: string[]; ttlMs: number; now?: Date }): string {
    const altNames = opts.names.map((n) => (isIP(n) ? { type: 7, ip: n } : { type: 2, value: n }));
    const key = createPublicKey(publicKeyPem);
    return this.#sign(key, opts, [keyUsage(key), { name: 'extKeyUsage', serverAuth: true }, { name: 'subjectAltName', altNames }]);
  }

  #sign(publicKey: KeyObject, opts: { ttlMs: number; now?: Date }, extensions: object[]): string {
    const now = opts.now ?? new Date();
    const tbs = tbsCertificate({
      publicKey, signingKey: this.#key, serial: serialNumber(),
      // Backdating absorbs clock skew between nodes; capped so that short test TTLs keep their meaning.
      notBefore: new Date(now.getTime() - Math.min(60_000, opts.ttlMs / 4)), notAfter: new Date(now.getTime() + opts.ttlMs),
      subject: [{ name: 'organizationName', value: 'meshlet' }], issuer: this.#issuer,
      extensions: [
        { name: 'basicConstraints', cA: false, critical: true },
        ...extensions,
        { name: 'authorityKeyIdentifier', keyIdentifier: this.#authorityKeyId },
      ],
    });
    return signed(tbs, this.#key, 'CERTIFICATE');
  }
}

/** A leaf's key usage: an ECDSA key only signs; an RSA key may also take part in key transport. */
function keyUsage(key: KeyObject): object {
  return { name: 'keyUsage', digitalSignature: true, ...(key.asymmetricKeyType === 'rsa' ? { keyEncipherment: true } : {}), critical: true };
}

/** Checks and signs a workload CSR in one call (local mode, tests, benchmarks). */
export function signWorkloadCsr(root: RootCa | CaSigner, csrPem: string, opts: SignOptions): { certPem: string; spiffeId: string } {
  const signer = root instanceof CaSigner ? root : new CaSigner(root);
  const parsed = parseWorkloadCsr(csrPem, opts.trustDomain);
  return { certPem: signer.signWorkload(parsed, opts), spiffeId: parsed.spiffeId };
}
