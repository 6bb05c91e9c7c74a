// A script for `node --input-type=module -e`: with the compile cache on, imports what a meshlet
// process loads after start (the Kubernetes source, the CA client, the CA's Kubernetes backend, a
// data-plane worker) from `src`, and prints whether Node had to load its type stripper ("stripped")
// or found every module in the cache ("cached"). Used on this machine and inside the image.
const LATE = ['cli.ts', 'workloads/kubernetes.ts', 'identity/ca-client.ts', 'ca/kubernetes.ts', 'ca/policy-status.ts', 'check/cluster.ts', 'proxy/worker.ts'];

export function compileCacheProbe(src: string): string {
  return `import { enableCompileCache } from 'node:module';
enableCompileCache();
for (const m of ${JSON.stringify(LATE)}) await import(${JSON.stringify(src)} + '/' + m);
console.log(process.moduleLoadList.some((m) => m.includes('amaro')) ? 'stripped' : 'cached');`;
}
