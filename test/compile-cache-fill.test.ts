// The image fills Node's compile cache at build time (src/compile-cache-fill.js) and runs with a
// read-only root: a module the fill missed is type-stripped at every start, and loading the type
// stripper costs each agent RSS. So every module a running agent or CA may load late (the
// Kubernetes source, the CA client, the CA's Kubernetes backend) must come from the cache.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runCommand } from '../src/capture/exec.ts';
import { compileCacheProbe } from './support/compile-cache-probe.ts';

const SRC = join(import.meta.dirname, '../src');
const PROBE = compileCacheProbe(SRC);

describe('the compile cache the image fills', () => {
  let dir: string;
  const probe = async (cache: string) => {
    const r = await runCommand('env', [`NODE_COMPILE_CACHE=${cache}`, process.execPath, '--input-type=module', '-e', PROBE]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim();
  };
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'meshlet-compile-cache-')); });
  after(async () => { if (dir) await rm(dir, { recursive: true, force: true }); });

  it('holds every module loaded late, so none is type-stripped at start', async () => {
    assert.equal(await probe(join(dir, 'empty')), 'stripped', 'without the fill the probe must see the stripper (else it proves nothing)');
    const r = await runCommand('env', [`NODE_COMPILE_CACHE=${join(dir, 'filled')}`, process.execPath, join(SRC, 'compile-cache-fill.js')]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await probe(join(dir, 'filled')), 'cached');
  });
});
