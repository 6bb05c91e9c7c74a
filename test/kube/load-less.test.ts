// The agent's and the CA's Kubernetes paths load only the parts of @kubernetes/client-node it uses
// (src/kube/load-less.ts): KubeConfig, Watch and ListWatch, not the generated API groups and models
// that are most of the package's memory. Run in a child process, as the agent runs: the test
// process itself has long loaded the whole package.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { runCommand } from '../../src/capture/exec.ts';
import { NOT_READY_TAINT } from '../../src/workloads/taint-gate.ts';
import { ApiStandIn, namespaceObject, nodeObject, podObject } from '../support/apiserver.ts';
import { eventually } from '../support/wait.ts';

const CHILD = join(import.meta.dirname, '../support/client-node-loads.ts');
const generated = (files: string[]) => files.filter((f) => /^dist\/gen\/(apis|models|types)\//.test(f));

describe('loading less of client-node', () => {
  let api: ApiStandIn;
  let dir: string;
  const follow = async (mode: 'lean' | 'whole') => {
    const r = await runCommand(process.execPath, [CHILD, mode, join(dir, 'kubeconfig')]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { workloads: number; caApi: boolean; rootSecret: unknown; yaml: boolean; loaded: string[] };
  };

  before(async () => {
    api = await ApiStandIn.start();
    api.missing.delete('meshpolicies');
    dir = await mkdtemp(join(tmpdir(), 'meshlet-load-less-'));
    await writeFile(join(dir, 'kubeconfig'), api.kubeConfigYaml());
    api.put('namespaces', namespaceObject('shop', 'enabled'));
    api.put('pods', podObject({ name: 'web-1', namespace: 'shop', node: 'node-a', ip: '10.1.0.10' }));
  });
  after(async () => {
    await api?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('follows the cluster, removes its node\'s taint and runs the CA\'s parts without the generated API and models', async () => {
    const node = nodeObject('node-a');
    api.put('nodes', { ...node, spec: { ...(node.spec as object), taints: [{ key: NOT_READY_TAINT, effect: 'NoSchedule' }] } });
    const lean = await follow('lean');
    assert.equal(lean.workloads, 1, 'the pod arrived');
    assert.equal(lean.caApi, true, 'the CA\'s authorizer reached the API');
    assert.equal(lean.rootSecret, null, 'no root Secret yet: read as absent');
    assert.ok(api.requests.some((r) => r.path.startsWith('/apis/meshlet.dev/v1alpha1/meshpolicies')), 'the CA listed MeshPolicies');
    await eventually('the taint removed', () => ((api.get('nodes', undefined, 'node-a') as any).spec.taints ?? []).length === 0);
    assert.ok(lean.loaded.includes('dist/config.js') && lean.loaded.includes('dist/cache.js'), `KubeConfig and ListWatch came from client-node: ${lean.loaded.join(' ')}`);
    assert.deepEqual(generated(lean.loaded), [], 'generated modules loaded');
    assert.ok(!lean.loaded.includes('dist/serializer.js'), 'the model serializer loaded');
    assert.ok(lean.loaded.length < 40, `${lean.loaded.length} client-node files loaded`);
    assert.equal(lean.yaml, false, 'the YAML parser loaded though no file and no policy was read');
  });

  it('would notice the whole package loading (the check above can fail)', async () => {
    const whole = await follow('whole');
    assert.equal(whole.workloads, 1);
    assert.ok(generated(whole.loaded).length > 500, `${generated(whole.loaded).length} generated modules`);
  });
});
