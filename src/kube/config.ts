// Where meshlet finds the Kubernetes API: a kubeconfig file (--kubeconfig) or, in a pod, the
// in-cluster configuration (the mounted ServiceAccount token and KUBERNETES_SERVICE_HOST); and what
// the agent and the CA both read of it.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { KubeConfig } from '@kubernetes/client-node';
import { ConfigError } from '../errors.ts';
import { loadLessOfClientNode } from './load-less.ts';

/**
 * Set by the kubelet on the API's copy of a static pod. Such a pod is whatever its kubelet says (any
 * namespace, no service account): neither the agents nor the CA take it for a workload.
 */
export const MIRROR_ANNOTATION = 'kubernetes.io/config.mirror';

/** HTTP status of a client-node error (ApiException `code`, Watch `statusCode`), or undefined for network errors. */
export function apiStatus(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown } | undefined;
  return typeof e?.code === 'number' ? e.code : typeof e?.statusCode === 'number' ? e.statusCode : undefined;
}

export async function loadKubeConfig(path: string | undefined): Promise<KubeConfig> {
  // Loaded on demand: local mode and `meshlet init` never pay for the client's import; and only
  // the parts meshlet uses, for every client-node module this process loads from now on.
  loadLessOfClientNode();
  const { KubeConfig } = await import('@kubernetes/client-node/dist/config.js');
  const kc = new KubeConfig();
  try {
    // In a pod, the pod's own configuration; elsewhere $KUBECONFIG, then ~/.kube/config, as kubectl.
    if (path) kc.loadFromFile(path);
    else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
    else if (process.env.KUBECONFIG || existsSync(join(homedir(), '.kube', 'config'))) kc.loadFromDefault();
    // (loadFromDefault alone would make up a cluster at localhost:8080)
    else throw new Error('there is no $KUBECONFIG, ~/.kube/config or in-cluster configuration; pass --kubeconfig PATH');
    if (!kc.getCurrentCluster()) throw new Error('it names no current cluster');
  } catch (err) {
    throw new ConfigError([`cannot load ${path ? `kubeconfig ${path}` : 'a Kubernetes configuration'}: ${(err as Error).message}`]);
  }
  return kc;
}
