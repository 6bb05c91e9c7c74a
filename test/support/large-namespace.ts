// The Kubernetes source against the stand-in with N pods in one namespace, printing how many mesh
// pods its first snapshot holds. test/workloads/kubernetes.test.ts runs it with a small stack
// (--stack-size): client-node's ListWatch.list() spreads a namespace's objects into push()'s
// arguments, which overflows a small stack at some thousands, the default one at about 120,000.
import pino from 'pino';
import { createKubernetesSource } from '../../src/workloads/kubernetes.ts';
import { ApiStandIn, namespaceObject, podObject } from './apiserver.ts';

const n = Number(process.argv[2]);
const api = await ApiStandIn.start();
api.put('namespaces', namespaceObject('big', 'enabled'));
for (let i = 0; i < n; i++) api.put('pods', podObject({ name: `p${i}`, namespace: 'big', node: 'n1', serviceAccount: 'sa', ip: `10.${20 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}` }));
const source = createKubernetesSource({ kubeConfig: api.kubeConfig(), trustDomain: 'cluster.local', log: pino({ level: 'silent' }), pageSize: 1000 });
await source.start({
  onSnapshot: (s) => {
    process.stdout.write(`${JSON.stringify({ meshPods: s.workloads.length, cached: source.status().pods })}\n`);
    void source.close().then(() => api.close()).then(() => process.exit(0));
  },
  onError: (err) => { throw err; },
});
