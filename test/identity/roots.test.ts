import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createRootCa, keyAlgorithmOf } from '../../src/identity/ca.ts';
import { parseBundle } from '../../src/identity/pem.ts';
import { CaError } from '../../src/errors.ts';
import { DirRootStore, ensureRoot, loadRootSet, ROOT_FILES, rotateRoot } from '../../src/identity/roots.ts';

describe('root store and rotation', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'meshlet-roots-')); });
  after(() => rm(dir, { recursive: true, force: true }));

  it('creates a root once and never overwrites it; the key is private', async () => {
    const store = new DirRootStore(join(dir, 'a'));
    const first = await ensureRoot(store, 'td');
    assert.equal(first.created, true);
    assert.equal(first.set.trustDomain, 'td');
    const second = await ensureRoot(store, 'td');
    assert.equal(second.created, false);
    assert.equal(second.set.signingFingerprint, first.set.signingFingerprint);
    const other = await createRootCa({ trustDomain: 'td' });
    assert.equal(await store.create({ [ROOT_FILES.key]: other.keyPem, [ROOT_FILES.cert]: other.certPem }), false);
    assert.equal((await loadRootSet(store)).signingFingerprint, first.set.signingFingerprint);
    assert.equal((await stat(join(dir, 'a', ROOT_FILES.key))).mode & 0o777, 0o600);
  });

  it('creates missing directories, and refuses a path it can never create with a CaError, at once', async () => {
    const files = { [ROOT_FILES.key]: 'k', [ROOT_FILES.cert]: 'c' };
    assert.equal(await new DirRootStore(join(dir, 'deep', 'er', 'root')).create(files), true);
    await writeFile(join(dir, 'file'), 'x');
    await assert.rejects(new DirRootStore(join(dir, 'file')).create(files), (err: Error) => err instanceof CaError && /is not a directory/.test(err.message));
    await assert.rejects(new DirRootStore(join(dir, 'file', 'sub')).create(files), CaError);
    // Node's recursive mkdir spun for ever here (meshlet ca init --out /proc/nope).
    await assert.rejects(new DirRootStore('/proc/meshlet-nope/root').create(files), (err: Error) => err instanceof CaError && /cannot create \/proc\/meshlet-nope/.test(err.message));
  });

  it('rotates in three steps, refusing them out of order', async () => {
    const store = new DirRootStore(join(dir, 'b'));
    const { set: original } = await ensureRoot(store, 'td');
    await assert.rejects(rotateRoot(store, 'activate'), /run `prepare` first/);
    const prepared = await rotateRoot(store, 'prepare');
    assert.equal(prepared.signingFingerprint, original.signingFingerprint, 'the old root still signs');
    assert.equal(parseBundle(prepared.trustBundlePem).length, 2);
    await assert.rejects(rotateRoot(store, 'prepare'), /already prepared/);
    await assert.rejects(rotateRoot(store, 'finish'), /run `activate` first/);
    const activated = await rotateRoot(store, 'activate');
    assert.notEqual(activated.signingFingerprint, original.signingFingerprint);
    assert.equal(activated.signing.certPem, prepared.next!.certPem);
    assert.equal(activated.trustBundlePem, prepared.trustBundlePem, 'both roots stay trusted until finish');
    assert.equal(activated.next, undefined);
    await assert.rejects(rotateRoot(store, 'prepare'), /run `finish` first/);
    const finished = await rotateRoot(store, 'finish');
    assert.equal(finished.trustBundlePem, activated.signing.certPem);
    await assert.rejects(readFile(join(dir, 'b', ROOT_FILES.nextKey)), /ENOENT/);
  });

  it('rotates to the current root\'s kind of key unless told, and to the other kind when told', async () => {
    const store = new DirRootStore(join(dir, 'kinds'));
    const { set } = await ensureRoot(store, 'td');
    assert.equal(keyAlgorithmOf(set.signing.keyPem), 'ecdsa-p256', 'a first root is ECDSA');
    assert.equal(keyAlgorithmOf((await rotateRoot(store, 'prepare')).next!.keyPem), 'ecdsa-p256');
    await rotateRoot(store, 'activate');
    await rotateRoot(store, 'finish');
    const toRsa = await rotateRoot(store, 'prepare', 'rsa-2048');
    assert.equal(keyAlgorithmOf(toRsa.next!.keyPem), 'rsa-2048', 'a rotation moves the mesh to RSA');
    assert.equal(keyAlgorithmOf(toRsa.signing.keyPem), 'ecdsa-p256', 'while the old root still signs');
  });

  it('refuses a key that does not belong to its certificate, and a bundle without the signing root', async () => {
    const store = new DirRootStore(join(dir, 'c'));
    await ensureRoot(store, 'td');
    const other = await createRootCa({ trustDomain: 'td' });
    const keyFile = join(dir, 'c', ROOT_FILES.key);
    const good = await readFile(keyFile, 'utf8');
    await writeFile(keyFile, other.keyPem);
    await assert.rejects(loadRootSet(store), /ca.key does not belong to its certificate/);
    await writeFile(keyFile, good);
    await writeFile(join(dir, 'c', ROOT_FILES.bundle), other.certPem);
    await assert.rejects(loadRootSet(store), /does not contain the signing root/);
    const foreign = await createRootCa({ trustDomain: 'elsewhere' });
    const set = await store.read();
    await writeFile(join(dir, 'c', ROOT_FILES.bundle), set![ROOT_FILES.cert]! + foreign.certPem);
    await assert.rejects(loadRootSet(store), /mixes trust domains/);
  });
});
