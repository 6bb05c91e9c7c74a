// tcpdump on a namespace's interface, for tests that must see what crossed a link.
import { readFile } from 'node:fs/promises';
import { readPcap, type TcpSegment } from './pcap.ts';
import type { NodeNs, Topology } from './topology.ts';

/** Starts tcpdump on a node's underlay interface, writing `file`; stop() returns the TCP segments it saw. */
export async function startPacketCapture(topo: Topology, node: NodeNs, file: string): Promise<{ stop(): Promise<TcpSegment[]> }> {
  // --immediate-mode: without it the kernel hands packets over in blocks (up to a second late) and
  // a capture stopped right after a short exchange loses its tail.
  const child = topo.spawn(node.ns, 'tcpdump', ['-i', node.underlayIf, '-n', '-U', '--immediate-mode', '-s', '0', '-w', file, 'tcp']);
  // tcpdump says "listening on ..." on stderr once the capture is armed.
  await new Promise<void>((res, rej) => {
    const timer = setTimeout(() => rej(new Error('tcpdump did not start')), 10_000);
    child.stderr?.on('data', (d: Buffer) => { if (d.toString().includes('listening')) { clearTimeout(timer); res(); } });
    child.once('exit', (code) => { clearTimeout(timer); rej(new Error(`tcpdump exited ${code} (apt-get install tcpdump)`)); });
  });
  return {
    stop: async () => {
      const exited = new Promise((res) => child.once('exit', res));
      child.kill('SIGINT');
      await exited;
      return readPcap(await readFile(file));
    },
  };
}

/** Runs `run` with tcpdump on the node's underlay interface; the segments seen while it ran. */
export async function capturing<T>(topo: Topology, node: NodeNs, file: string, run: () => Promise<T>): Promise<{ result: T; segments: TcpSegment[] }> {
  const capture = await startPacketCapture(topo, node, file);
  try {
    const result = await run();
    return { result, segments: await capture.stop() };
  } catch (err) {
    await capture.stop();
    throw err;
  }
}
