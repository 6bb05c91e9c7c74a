// Where meshlet finds the Kubernetes API: a kubeconfig file (--kubeconfig) or, in a pod, the
// in-cluster configuration (the mounted ServiceAccount token and KUBERNETES_SERVICE_HOST); and what
// the agent and the CA both read of it.
import type { KubeConfig } from '@kubernetes/client-node';
import { ConfigError } from './errors.ts';

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
  // Loaded on demand: local mode and `meshlet init` never pay for the client's import.
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  try {
    if (path) kc.loadFromFile(path);
    else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
    else throw new Error('not running in a pod (KUBERNETES_SERVICE_HOST is unset); pass --kubeconfig PATH');
    if (!kc.getCurrentCluster()) throw new Error('it names no current cluster');
  } catch (err) {
    throw new ConfigError([`cannot load ${path ? `kubeconfig ${path}` : 'the in-cluster configuration'}: ${(err as Error).message}`]);
  }
  return kc;
}
