// A data plane in a worker thread, fed only by messages: settings as workerData, then snapshots.
// Its tunnel server listens on the destination pod's address; the original destination is where
// each socket was addressed (test/support/proxy-context.ts does the same in process).
import net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import pino from 'pino';
import { plainIp } from '../../src/capture/socket.ts';
import { DataPlane } from '../../src/proxy/data-plane.ts';
import type { DataPlaneSettings, DataPlaneSnapshot } from '../../src/proxy/snapshot.ts';

export type ToWorker = { snapshot: DataPlaneSnapshot } | { listen: string } | { close: true };
export type FromWorker = { applied: number; local: string[] } | { port: number } | { closed: true } | { access: Record<string, unknown> };

const port = parentPort!;
const send = (m: FromWorker) => port.postMessage(m);
const log = pino({ level: 'info' }, { write: (line: string) => { const l = JSON.parse(line); if (l.scope === 'access') send({ access: l }); } });
const data = new DataPlane(workerData as DataPlaneSettings, {
  log,
  originalDestination: (s) => ({ ip: plainIp(s.localAddress), port: s.localPort ?? 0, family: 4 }),
  stallProbe: { probe: () => undefined, reset: (s) => s.destroy() },
});
let server: net.Server | undefined;
port.on('message', (m: ToWorker) => {
  if ('snapshot' in m) {
    data.apply(m.snapshot);
    send({ applied: m.snapshot.generation, local: data.registry.localCaptured().map((w) => w.ip) });
  } else if ('listen' in m) {
    server = net.createServer((s) => data.listeners.tunnel.accept(s));
    server.listen(0, m.listen, () => send({ port: (server!.address() as net.AddressInfo).port }));
  } else {
    server?.close();
    void data.close(() => 0).then(() => { send({ closed: true }); port.close(); });
  }
});
