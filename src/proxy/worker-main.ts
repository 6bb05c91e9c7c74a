// The entry of a data-plane worker thread (workers.ts): the real original destination and probes.
import { parentPort, workerData } from 'node:worker_threads';
import { serveDataPlane, type WorkerInit } from './worker.ts';

serveDataPlane(parentPort!, workerData as WorkerInit);
