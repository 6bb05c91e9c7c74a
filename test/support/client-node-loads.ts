// Run as a child by test/kube/load-less.test.ts: follows a cluster as the agent does (kubeconfig
// file, Kubernetes workload source, first snapshot), starts the CA's Kubernetes parts (authorizer,
// root Secret, MeshPolicy status), and prints which of client-node's files this process loaded,
// and whether the YAML parser (the workloads file's, the CRD schema's) was loaded. `whole` imports the package's index first, as a process that does not load less.
import { registerHooks } from 'node:module';
import pino from 'pino';

const loaded: string[] = [];
let yaml = false;
registerHooks({
  load(url, context, nextLoad) {
    if (url.includes('/@kubernetes/client-node/')) loaded.push(url.replace(/^.*\/client-node\//, ''));
    if (url.includes('/node_modules/yaml/')) yaml = true;
    return nextLoad(url, context);
  },
});

const [mode, kubeconfig] = process.argv.slice(2);
if (mode === 'whole') await import('@kubernetes/client-node');
const { workloadSource } = await import('../../src/workloads/from-config.ts');
const source = await workloadSource({ kind: 'kubernetes', kubeconfig, trustDomain: 'cluster.local' }, pino({ level: 'silent' }));
const snapshot = await new Promise<{ workloads: readonly unknown[] }>((resolve, reject) => {
  void source.start({ onSnapshot: resolve, onError: reject }).catch(reject);
});
source.nodeReady?.('node-a');
await new Promise((r) => setTimeout(r, 50));
await source.close();

const { loadKubeConfig } = await import('../../src/kube/config.ts');
const kubeConfig = await loadKubeConfig(kubeconfig);
const { createKubernetesAuthorizer, SecretRootStore } = await import('../../src/ca/kubernetes.ts');
const { PolicyStatusWriter } = await import('../../src/ca/policy-status.ts');
const log = pino({ level: 'silent' });
const authorizer = createKubernetesAuthorizer({ kubeConfig, agentNamespace: 'meshlet-system', agentServiceAccount: 'meshlet-agent', log });
await authorizer.start();
const root = await new SecretRootStore(kubeConfig, 'meshlet-system', 'meshlet-root').read();
const status = new PolicyStatusWriter({ kubeConfig, log });
await status.start();
status.close();
console.log(JSON.stringify({ workloads: snapshot.workloads.length, caApi: authorizer.ready(), rootSecret: root ?? null, yaml, loaded }));
