// The workload source a WorkloadsConfig names, and a one-shot read of it (for `meshlet policy check`).
import { access, constants } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { WorkloadsConfig } from '../config/common.ts';
import { WorkloadSourceError } from '../errors.ts';
import { loadKubeConfig } from '../kube/config.ts';
import type { MeshSnapshot } from './model.ts';
import type { WorkloadSource } from './source.ts';

export async function workloadSource(config: WorkloadsConfig, log: Logger): Promise<WorkloadSource> {
  // Each source loaded when used: the file's YAML parser is not the Kubernetes mode's to pay for.
  if (config.kind === 'file') return (await import('./file.ts')).createFileSource({ path: config.path, pollIntervalMs: config.pollMs });
  // Loaded on demand, after the configuration (which makes client-node load less: kube/load-less.ts):
  // local mode never pays for @kubernetes/client-node (bench/README.md).
  const kubeConfig = await loadKubeConfig(config.kubeconfig);
  const { createKubernetesSource } = await import('./kubernetes.ts');
  return createKubernetesSource({ kubeConfig, trustDomain: config.trustDomain, log, ...(config.remoteFromSlices ? { remoteFromSlices: config.remoteFromSlices } : {}) });
}

/** The first complete snapshot the source delivers; a rejected file or a timeout is an error. */
export async function readSnapshotOnce(config: WorkloadsConfig, log: Logger, timeoutMs = 30_000): Promise<MeshSnapshot> {
  // An agent waits for its file to appear; a one-shot reader says at once that it is not there.
  if (config.kind === 'file') {
    await access(config.path, constants.R_OK).catch((err: Error) => { throw new WorkloadSourceError([`cannot read ${config.path}: ${err.message}`]); });
  }
  const source = await workloadSource(config, log);
  try {
    return await new Promise<MeshSnapshot>((resolve, reject) => {
      const timer = setTimeout(() => {
        const last = (source.status?.() as { lastError?: string } | undefined)?.lastError;
        reject(new WorkloadSourceError([`no complete view of the workloads within ${timeoutMs} ms${last ? ` (last error: ${last})` : ''}`]));
      }, timeoutMs);
      source.start({
        onSnapshot: (s) => { clearTimeout(timer); resolve(s); },
        onError: (err) => { clearTimeout(timer); reject(err); },
      }).catch(reject);
    });
  } finally {
    await source.close();
  }
}
