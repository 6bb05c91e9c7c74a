// meshlet's entry point (bin/meshlet, npm start, the image, and every process the lab spawns).
// Plain JavaScript on purpose: it turns on Node's compile cache before the first TypeScript module
// loads. With the cache warm, Node neither loads its type stripper (a WebAssembly build of swc)
// nor recompiles the sources, and an agent starts with about 30 MiB less RSS (bench/README.md,
// "Agent memory"). The cache is keyed on each file's contents, so an edited source is never run
// stale; the directory is $NODE_COMPILE_CACHE, else node-compile-cache under the system temp dir.
import { enableCompileCache } from 'node:module';

enableCompileCache();
const { run } = await import('./cli.ts');
run(process.argv.slice(2));
