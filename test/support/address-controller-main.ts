// One replica's address controller as its own process, so that a test can kill a leader outright
// (SIGKILL: no lease released) and watch the other replica take over.
//
//   node test/support/address-controller-main.ts --kubeconfig F --identity a
//   > {"started":true}           once its views are synced and it is electing
//   > {"leading":true}           each time it starts or stops leading
//   > {"memory":{...}}           on SIGUSR2: process.memoryUsage() after a full GC (with --expose-gc)
import { parseArgs } from 'node:util';
import pino from 'pino';
import { AddressController } from '../../src/addresses/controller.ts';
import { loadKubeConfig } from '../../src/kube/config.ts';
import { trimMallocEvery } from '../../src/malloc-tuning.ts';

const { values } = parseArgs({ options: { kubeconfig: { type: 'string' }, identity: { type: 'string' } } });
// As `meshlet ca serve` runs it (its --malloc-trim default): free malloc memory handed back every 10 s.
trimMallocEvery(10_000);
const say = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
const controller = new AddressController({
  kubeConfig: await loadKubeConfig(values.kubeconfig), namespace: 'meshlet-system', identity: values.identity ?? 'replica',
  trustDomain: 'cluster.local', log: pino({ level: 'warn' }, process.stderr),
});
await controller.start();
say({ started: true });
let leading = false;
setInterval(() => {
  if (controller.leading !== leading) say({ leading: leading = controller.leading });
}, 50);
process.on('SIGUSR2', () => {
  (globalThis as { gc?: () => void }).gc?.();
  say({ memory: process.memoryUsage() });
});
process.once('SIGTERM', () => void controller.close().then(() => process.exit(0)));
