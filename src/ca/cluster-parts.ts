// What the CA runs besides signing when it runs in a cluster: the MeshPolicy status writer
// (policy-status.ts) and, with --address-slices on, this replica's address controller
// (addresses/controller.ts). Loaded only in Kubernetes mode.
import { hostname } from 'node:os';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { CaServeConfig } from '../config/ca.ts';

export interface ClusterPart { close(): void | Promise<void> }

export async function startClusterParts(kubeConfig: KubeConfig, config: CaServeConfig, log: Logger): Promise<ClusterPart[]> {
  const { PolicyStatusWriter } = await import('./policy-status.ts');
  const policyStatus = new PolicyStatusWriter({ kubeConfig, log });
  await policyStatus.start();
  if (!config.addressSlices || config.backend.kind !== 'kubernetes') return [policyStatus];
  const { AddressController } = await import('../addresses/controller.ts');
  // The pod's name (the Deployment's downward API), else the host name, which is the pod's name too.
  const identity = process.env.POD_NAME || hostname();
  const addresses = new AddressController({ kubeConfig, namespace: config.backend.namespace, identity, trustDomain: config.trustDomain, log });
  await addresses.start();
  return [policyStatus, addresses];
}
