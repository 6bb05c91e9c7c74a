// A data-plane worker as src/proxy/worker-main.ts starts one, with the original destination
// injected instead of read by SO_ORIGINAL_DST: a socket accepted on the 15006 stand-in was going to
// its local address at the port MESHLET_TEST_APP_PORT names; anything else to where it arrived.
import { parentPort, workerData } from 'node:worker_threads';
import { plainIp } from '../../src/capture/socket.ts';
import { serveDataPlane, type WorkerInit } from '../../src/proxy/worker.ts';

const init = workerData as WorkerInit;
const appPort = Number(process.env.MESHLET_TEST_APP_PORT);
serveDataPlane(parentPort!, init, {
  originalDestination: (s) => ({
    ip: plainIp(s.localAddress),
    port: s.localPort === init.settings.ports.inboundPlaintext ? appPort : s.localPort ?? 0,
    family: 4,
  }),
  stallProbe: { probe: () => undefined, reset: (s) => s.destroy() },
});
