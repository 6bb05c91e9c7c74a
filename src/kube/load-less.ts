// Loads less of @kubernetes/client-node. Its KubeConfig (dist/config.js) imports the generated
// index, every API group and every model, to build typed clients; its ListWatch (dist/cache.js)
// imports the serializer of every model to pass a selector through unchanged. The agent and the CA
// use neither (kube/api.ts calls the API on KubeConfig's authentication), and those modules are
// most of what the package costs a process in memory (bench/README.md, "Agent memory in Kubernetes
// mode"). So two of the package's own imports resolve to small stand-ins that export what the
// importer uses. A newer client-node with other paths matches nothing here: then the whole package
// loads again, which costs memory and changes no behaviour (test/kube/load-less.test.ts notices).
import { registerHooks } from 'node:module';

const DIST = '/@kubernetes/client-node/dist/';
const STAND_INS: ReadonlyArray<{ importer: string; specifier: string; url: string }> = [
  { importer: `${DIST}config.js`, specifier: './gen/index.js', url: new URL('./client-node-gen.ts', import.meta.url).href },
  { importer: `${DIST}cache.js`, specifier: './serializer.js', url: new URL('./client-node-serializer.ts', import.meta.url).href },
];

let registered = false;

/** Before the first client-node module loads; once per thread, later calls do nothing. */
export function loadLessOfClientNode(): void {
  if (registered) return;
  registered = true;
  registerHooks({
    resolve(specifier, context, nextResolve) {
      const parent = context.parentURL ?? '';
      const standIn = STAND_INS.find((s) => s.specifier === specifier && parent.endsWith(s.importer));
      return standIn ? { url: standIn.url, shortCircuit: true } : nextResolve(specifier, context);
    },
  });
}
