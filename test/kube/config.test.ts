import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.ts';
import { loadKubeConfig } from '../../src/kube/config.ts';
import { standInKubeConfig } from '../support/apiserver.ts';

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

  it('says what is missing: a kubeconfig that does not exist, or no configuration anywhere', async () => {
    await assert.rejects(loadKubeConfig('/nonexistent/kubeconfig'), (err: unknown) => err instanceof ConfigError && /kubeconfig \/nonexistent\/kubeconfig/.test(err.message));
    await withEnv({ KUBERNETES_SERVICE_HOST: undefined, KUBECONFIG: undefined, HOME: '/nonexistent' }, () =>
      assert.rejects(loadKubeConfig(undefined), (err: unknown) => err instanceof ConfigError && /there is no \$KUBECONFIG, ~\/.kube\/config or in-cluster configuration; pass --kubeconfig/.test(err.message)));
  });

  it('outside a pod, takes $KUBECONFIG, then ~/.kube/config, as kubectl does', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-kc-'));
    try {
      await writeFile(join(dir, 'env-config'), standInKubeConfig('http://127.0.0.1:6001'));
      await mkdir(join(dir, '.kube'));
      await writeFile(join(dir, '.kube', 'config'), standInKubeConfig('http://127.0.0.1:6002'));
      await withEnv({ KUBERNETES_SERVICE_HOST: undefined, KUBECONFIG: join(dir, 'env-config'), HOME: dir }, async () => {
        assert.equal((await loadKubeConfig(undefined)).getCurrentCluster()?.server, 'http://127.0.0.1:6001');
      });
      await withEnv({ KUBERNETES_SERVICE_HOST: undefined, KUBECONFIG: undefined, HOME: dir }, async () => {
        assert.equal((await loadKubeConfig(undefined)).getCurrentCluster()?.server, 'http://127.0.0.1:6002');
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** Runs `run` with these environment variables set (undefined: unset), then puts them back. */
async function withEnv(vars: Record<string, string | undefined>, run: () => Promise<void>): Promise<void> {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const set = (v: Record<string, string | undefined>) => { for (const [k, x] of Object.entries(v)) { if (x === undefined) delete process.env[k]; else process.env[k] = x; } };
  set(vars);
  try { await run(); } finally { set(saved); }
}
