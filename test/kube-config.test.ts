import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ConfigError } from '../src/errors.ts';
import { loadKubeConfig } from '../src/kube-config.ts';
import { standInKubeConfig } from './support/apiserver.ts';

describe('loadKubeConfig', () => {
  it('reads a kubeconfig file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-kc-'));
    try {
      const file = join(dir, 'config');
      await writeFile(file, standInKubeConfig('http://127.0.0.1:6443'));
      const kc = await loadKubeConfig(file);
      assert.equal(kc.getCurrentCluster()?.server, 'http://127.0.0.1:6443');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('says what is missing: a kubeconfig that does not exist, or no in-cluster environment', async () => {
    await assert.rejects(loadKubeConfig('/nonexistent/kubeconfig'), (err: unknown) => err instanceof ConfigError && /kubeconfig \/nonexistent\/kubeconfig/.test(err.message));
    const saved = process.env.KUBERNETES_SERVICE_HOST;
    delete process.env.KUBERNETES_SERVICE_HOST;
    try {
      await assert.rejects(loadKubeConfig(undefined), (err: unknown) => err instanceof ConfigError && /KUBERNETES_SERVICE_HOST is unset\); pass --kubeconfig/.test(err.message));
    } finally {
      if (saved !== undefined) process.env.KUBERNETES_SERVICE_HOST = saved;
    }
  });
});
