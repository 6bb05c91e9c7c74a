// The API stand-in as its own process, for end-to-end tests that run it inside a network namespace
// (agents in node namespaces reach it over the underlay like a real apiserver). The test drives it
// with one JSON command per stdin line and reads one JSON reply per stdout line.
//
//   node test/support/apiserver-main.ts --host 10.240.0.12 --port 6443
//   > {"listening":"http://10.240.0.12:6443","token":"..."}
//   < {"id":1,"op":"put","resource":"pods","obj":{...}}
//   > {"id":1,"ok":true}
// Other ops: remove, breakWatches, expireWatches, bookmark, down, installCrd, token (a TokenReview answer), watching, get,
// fill (N Deployment-shaped pods on `node-<i % nodes>`).
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { ApiStandIn, deploymentPod, type Obj } from './apiserver.ts';

const { values } = parseArgs({ options: { host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string', default: '0' } } });
const api = await ApiStandIn.start({ host: values.host, port: Number(values.port) });
const reply = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');
reply({ listening: api.url, token: api.clientToken });

createInterface({ input: process.stdin }).on('line', (line) => {
  let cmd: any;
  try {
    cmd = JSON.parse(line);
    switch (cmd.op) {
      case 'put': api.put(cmd.resource, cmd.obj); break;
      case 'remove': api.remove(cmd.resource, cmd.namespace, cmd.name); break;
      case 'breakWatches': api.breakWatches(); break;
      case 'expireWatches': api.expireWatches(); break;
      case 'bookmark': api.bookmark(); break;
      case 'down': api.down = Boolean(cmd.value); break;
      case 'installCrd': api.missing.delete(cmd.resource); break;
      // Pods as a Deployment makes them, generated here rather than sent one per line (bench/scale.ts).
      case 'fill':
        for (let i = cmd.from ?? 0; i < (cmd.from ?? 0) + cmd.count; i++) {
          api.put('pods', deploymentPod(i, cmd.namespace, `node-${i % cmd.nodes}`, `10.${16 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`) as Obj);
        }
        break;
      case 'token': api.tokens.set(cmd.token, cmd.info); break;
      case 'watching': reply({ id: cmd.id, ok: true, value: api.watching(cmd.resource) }); return;
      case 'get': reply({ id: cmd.id, ok: true, value: api.get(cmd.resource, cmd.namespace, cmd.name) }); return;
      default: throw new Error(`unknown op ${JSON.stringify(cmd.op)}`);
    }
    reply({ id: cmd.id, ok: true });
  } catch (err) {
    reply({ id: cmd?.id, ok: false, error: (err as Error).message });
  }
}).on('close', () => { void api.close().then(() => process.exit(0)); });
