// Fills Node's compile cache ($NODE_COMPILE_CACHE) with every module meshlet runs, so that no
// process pays for type stripping or compiling at start. The image runs it at build time: its root
// is read-only at run time, so a module missing from the cache then is stripped and compiled at
// every start, and the type stripper alone costs a process about 18 MiB of RSS (bench/README.md,
// "Agent memory"). Plain JavaScript, like main.js, so that the cache is on before any TypeScript.
// Not src/demo/ (peer.ts runs when imported; the demo is not what the image is for).
import { globSync } from 'node:fs';
import { enableCompileCache } from 'node:module';
import { join } from 'node:path';

enableCompileCache();
const { loadLessOfClientNode } = await import('./kube/load-less.ts');
loadLessOfClientNode();
for (const file of globSync('**/*.ts', { cwd: import.meta.dirname }).sort()) {
  if (!file.startsWith('demo/')) await import(join(import.meta.dirname, file));
}
// The one part of client-node loaded only when used (kube/config.ts); the sources above import the rest.
await import('@kubernetes/client-node/dist/config.js');
