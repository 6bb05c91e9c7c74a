// The entry of a data-plane worker thread (workers.ts): the real original destination and probes.
// Plain JavaScript for the reason src/main.js is: the compile cache is per thread, and without it
// each worker would load Node's type stripper (a WebAssembly build of swc) for itself.
import { enableCompileCache } from 'node:module';
import { parentPort, workerData } from 'node:worker_threads';

enableCompileCache();
const { serveDataPlane } = await import('./worker.ts');
serveDataPlane(parentPort, workerData);
