// The root of trust as a small set of named files, wherever they are kept: a directory (local mode,
// the demo, tests) or a Kubernetes Secret (the cluster CA). Root rotation is three steps on these
// files, so it works the same on both:
//
//   ca.key, ca.crt        the signing root
//   trust-bundle.pem      every root workloads trust (the signing root, plus one other during rotation)
//   next.key, next.crt    a prepared root, already trusted, not yet signing
//
//   prepare:  create next.*; bundle = current + next   (agents learn to trust the new root)
//   activate: next.* becomes ca.*; bundle unchanged     (new certificates come from the new root)
//   finish:   bundle = ca.crt                           (once every certificate was re-issued)
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { CaError } from '../errors.ts';
import { createRootCa, keyAlgorithmOf, type KeyAlgorithm, type RootCa, rootTrustDomain } from './ca.ts';
import { parseBundle } from './pem.ts';

export const ROOT_FILES = { key: 'ca.key', cert: 'ca.crt', bundle: 'trust-bundle.pem', nextKey: 'next.key', nextCert: 'next.crt' } as const;
export type RootFiles = Partial<Record<string, string>>;

/** Where root files live. `create` never overwrites: losing a root breaks the whole mesh. */
export interface RootStore {
  readonly where: string;
  read(): Promise<RootFiles | undefined>;
  /** Writes `files` only if no root exists yet; returns false (and writes nothing) when one does. */
  create(files: RootFiles): Promise<boolean>;
  /** Replaces the whole set (rotation steps). */
  replace(files: RootFiles): Promise<void>;
}

export interface RootSet {
  signing: RootCa;
  trustDomain: string;
  /** Every trusted root, PEM, signing root included. */
  trustBundlePem: string;
  signingFingerprint: string;
  next?: RootCa;
}

/** Validates a set of root files; every inconsistency is a CaError naming the store. */
export function rootSetFromFiles(files: RootFiles, where: string): RootSet {
  const keyPem = files[ROOT_FILES.key];
  const certPem = files[ROOT_FILES.cert];
  if (!keyPem || !certPem) throw new CaError(`${where} holds no root (${ROOT_FILES.key} and ${ROOT_FILES.cert}); create one with \`meshlet ca init\``);
  let signingCert: X509Certificate;
  try {
    signingCert = new X509Certificate(certPem);
  } catch (err) {
    throw new CaError(`${where}/${ROOT_FILES.cert} is not a certificate: ${(err as Error).message}`);
  }
  if (!signingCert.ca) throw new CaError(`${where}/${ROOT_FILES.cert} is not a CA certificate`);
  assertKeyMatches(keyPem, signingCert, `${where}/${ROOT_FILES.key}`);
  const trustDomain = rootTrustDomain(certPem);
  const trustBundlePem = files[ROOT_FILES.bundle] ?? certPem;
  const bundle = parseBundle(trustBundlePem);
  if (!bundle.some((c) => c.fingerprint256 === signingCert.fingerprint256)) {
    throw new CaError(`${where}/${ROOT_FILES.bundle} does not contain the signing root`);
  }
  for (const root of bundle) {
    if (!root.ca) throw new CaError(`${where}/${ROOT_FILES.bundle} holds a certificate that is not a CA`);
    if (rootTrustDomain(root.toString()) !== trustDomain) throw new CaError(`${where}/${ROOT_FILES.bundle} mixes trust domains`);
  }
  const set: RootSet = { signing: { keyPem, certPem }, trustDomain, trustBundlePem, signingFingerprint: signingCert.fingerprint256 };
  const nextKey = files[ROOT_FILES.nextKey];
  const nextCert = files[ROOT_FILES.nextCert];
  if (nextKey && nextCert) {
    assertKeyMatches(nextKey, new X509Certificate(nextCert), `${where}/${ROOT_FILES.nextKey}`);
    set.next = { keyPem: nextKey, certPem: nextCert };
  }
  return set;
}

/** A key and certificate read half-way through a rotation must not be paired: that would sign garbage. */
function assertKeyMatches(keyPem: string, cert: X509Certificate, where: string): void {
  let matches = false;
  try {
    matches = cert.checkPrivateKey(createPrivateKey(keyPem));
  } catch (err) {
    throw new CaError(`${where} is not a private key: ${(err as Error).message}`);
  }
  if (!matches) throw new CaError(`${where} does not belong to its certificate`);
}

export async function loadRootSet(store: RootStore): Promise<RootSet> {
  const files = await store.read();
  if (!files) throw new CaError(`${store.where} holds no root; create one with \`meshlet ca init\``);
  return rootSetFromFiles(files, store.where);
}

/** Writes a new root into the store; false (nothing written) when it already holds one. */
export async function initRoot(store: RootStore, trustDomain: string, keyAlgorithm?: KeyAlgorithm): Promise<boolean> {
  const root = await createRootCa({ trustDomain, ...(keyAlgorithm ? { keyAlgorithm } : {}) });
  return store.create({ [ROOT_FILES.key]: root.keyPem, [ROOT_FILES.cert]: root.certPem, [ROOT_FILES.bundle]: root.certPem });
}

/** Creates a first root unless the store already has one (which is then kept, never replaced). */
export async function ensureRoot(store: RootStore, trustDomain: string): Promise<{ created: boolean; set: RootSet }> {
  const existing = await store.read();
  if (existing?.[ROOT_FILES.key]) return { created: false, set: rootSetFromFiles(existing, store.where) };
  const created = await initRoot(store, trustDomain);
  return { created, set: await loadRootSet(store) };
}

export type RotationStep = 'prepare' | 'activate' | 'finish';

/** Applies one rotation step; refuses steps out of order with a message that says what comes next. */
export async function rotateRoot(store: RootStore, step: RotationStep, keyAlgorithm?: KeyAlgorithm): Promise<RootSet> {
  const files = await store.read();
  if (!files) throw new CaError(`${store.where} holds no root to rotate`);
  const set = rootSetFromFiles(files, store.where);
  const bundleSize = parseBundle(set.trustBundlePem).length;
  let next: RootFiles;
  switch (step) {
    case 'prepare': {
      if (set.next) throw new CaError(`a rotation is already prepared in ${store.where}; run \`activate\` next`);
      if (bundleSize > 1) throw new CaError(`the trust bundle still holds an old root; run \`finish\` first`);
      // The current root's kind of key unless told: a rotation is also how a mesh changes it.
      const root = await createRootCa({ trustDomain: set.trustDomain, keyAlgorithm: keyAlgorithm ?? keyAlgorithmOf(set.signing.keyPem) });
      next = { ...files, [ROOT_FILES.nextKey]: root.keyPem, [ROOT_FILES.nextCert]: root.certPem, [ROOT_FILES.bundle]: set.signing.certPem + root.certPem };
      break;
    }
    case 'activate': {
      if (!set.next) throw new CaError(`no prepared root in ${store.where}; run \`prepare\` first`);
      next = { [ROOT_FILES.key]: set.next.keyPem, [ROOT_FILES.cert]: set.next.certPem, [ROOT_FILES.bundle]: set.trustBundlePem };
      break;
    }
    case 'finish': {
      if (set.next) throw new CaError(`the prepared root is not active yet; run \`activate\` first`);
      next = { [ROOT_FILES.key]: set.signing.keyPem, [ROOT_FILES.cert]: set.signing.certPem, [ROOT_FILES.bundle]: set.signing.certPem };
      break;
    }
  }
  rootSetFromFiles(next, store.where);
  await store.replace(next);
  return loadRootSet(store);
}

/** Root files in a directory: the key 0600, the rest 0644, each replaced by write-then-rename. */
export class DirRootStore implements RootStore {
  readonly where: string;
  readonly dir: string;
  constructor(dir: string) {
    this.dir = dir;
    this.where = dir;
  }

  async read(): Promise<RootFiles | undefined> {
    const files: RootFiles = {};
    for (const name of Object.values(ROOT_FILES)) {
      try {
        files[name] = await readFile(join(this.dir, name), 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new CaError(`cannot read ${join(this.dir, name)}: ${(err as Error).message}`);
      }
    }
    return Object.keys(files).length > 0 ? files : undefined;
  }

  async create(files: RootFiles): Promise<boolean> {
    await makeDir(this.dir, 0o700);
    try {
      // 'wx' fails when the key exists: two racing creators cannot both win.
      await writeFile(join(this.dir, ROOT_FILES.key), files[ROOT_FILES.key] ?? '', { mode: 0o600, flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw new CaError(`cannot write ${join(this.dir, ROOT_FILES.key)}: ${(err as Error).message}`);
    }
    const { [ROOT_FILES.key]: _key, ...rest } = files;
    await this.#writeAll(rest);
    return true;
  }

  async replace(files: RootFiles): Promise<void> {
    await this.#writeAll(files);
    for (const name of Object.values(ROOT_FILES)) if (files[name] === undefined) await rm(join(this.dir, name), { force: true });
  }

  async #writeAll(files: RootFiles): Promise<void> {
    for (const [name, content] of Object.entries(files)) {
      if (content === undefined) continue;
      const path = join(this.dir, name);
      await writeFile(`${path}.tmp`, content, { mode: name.endsWith('.key') ? 0o600 : 0o644 });
      await rename(`${path}.tmp`, path);
    }
  }
}

/**
 * mkdir -p, one level at a time: Node's recursive mkdir spins for ever where a directory can never
 * be created (under /proc). A path through a file, or a directory that cannot be made, is a CaError.
 */
async function makeDir(dir: string, mode: number): Promise<void> {
  const missing: string[] = [];
  for (let d = resolve(dir); ; d = dirname(d)) {
    const found = await stat(d).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw new CaError(`cannot use ${d}: ${err.message}`);
    });
    if (found) {
      if (!found.isDirectory()) throw new CaError(`${d} is not a directory`);
      break;
    }
    missing.unshift(d);
    if (d === dirname(d)) break;
  }
  for (const d of missing) {
    await mkdir(d, { mode }).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw new CaError(`cannot create ${d}: ${err.message}`);
    });
  }
}

/** Which of the roots signed a leaf (its fingerprint), or undefined. */
export function signingRootOf(leafPem: string, roots: X509Certificate[]): string | undefined {
  const leaf = new X509Certificate(leafPem);
  return roots.find((r) => leaf.checkIssued(r) && leaf.verify(r.publicKey))?.fingerprint256;
}
