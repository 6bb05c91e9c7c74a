import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { KubeConfig } from '@kubernetes/client-node';
import { apiPath, CONTENT, CORE, KubeApiError, kubeApi } from '../../src/kube/api.ts';
import { apiStatus } from '../../src/kube/config.ts';
import { ApiStandIn, namespaceObject, nodeObject, podObject, standInKubeConfig } from '../support/apiserver.ts';

describe('REST on client-node\'s configuration', () => {
  let api: ApiStandIn;
  before(async () => {
    api = await ApiStandIn.start();
    api.put('namespaces', namespaceObject('shop', 'enabled'));
    for (const name of ['web-1', 'web-2', 'db-1']) api.put('pods', podObject({ name, namespace: 'shop', node: name === 'db-1' ? 'node-b' : 'node-a', ip: '10.1.0.10' }));
  });
  after(async () => { await api?.close(); });

  it('reads with a query, authenticated as the configuration says', async () => {
    const list = await kubeApi(api.kubeConfig()).get<{ items: Array<{ metadata: { name: string } }>; metadata: { continue?: string } }>(
      '/api/v1/namespaces/shop/pods', { fieldSelector: 'spec.nodeName=node-a', limit: 1, unused: undefined });
    assert.deepEqual(list.items.map((p) => p.metadata.name), ['web-1']);
    assert.ok(list.metadata.continue, 'paged: a continue token for the second pod');
    const wrong = new KubeConfig();
    wrong.loadFromString(standInKubeConfig(`http://127.0.0.1:${(api.server.address() as net.AddressInfo).port}`, 'not-the-token'));
    await assert.rejects(kubeApi(wrong).get('/api/v1/namespaces'), (err: unknown) => apiStatus(err) === 401);
  });

  it('writes a JSON patch with its content type', async () => {
    api.put('nodes', { ...nodeObject('node-a'), spec: { taints: [{ key: 'a', effect: 'NoSchedule' }] } });
    await kubeApi(api.kubeConfig()).send('PATCH', '/api/v1/nodes/node-a', [{ op: 'remove', path: '/spec/taints/0' }], CONTENT.jsonPatch);
    assert.deepEqual((api.get('nodes', undefined, 'node-a') as unknown as { spec: { taints: unknown[] } }).spec.taints, []);
  });

  it('fails with the status and the API\'s message, or the network\'s reason, or a timeout', async () => {
    const err = await kubeApi(api.kubeConfig()).get('/api/v1/namespaces/shop/pods/nope').catch((e: unknown) => e);
    assert.ok(err instanceof KubeApiError);
    assert.equal(apiStatus(err), 404);
    assert.match(err.message, /^GET \/api\/v1\/namespaces\/shop\/pods\/nope: HTTP 404: .*nope/);

    const closed = net.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as net.AddressInfo).port;
    await new Promise((r) => closed.close(r));
    const gone = new KubeConfig();
    gone.loadFromString(standInKubeConfig(`http://127.0.0.1:${port}`));
    await assert.rejects(kubeApi(gone).get('/api/v1/pods'), (e: Error) => apiStatus(e) === undefined && /^GET \/api\/v1\/pods: fetch failed \(ECONNREFUSED\)$/.test(e.message));

    // A server that accepts and never answers.
    const silent = net.createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const mute = new KubeConfig();
    mute.loadFromString(standInKubeConfig(`http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`));
    try {
      await assert.rejects(kubeApi(mute, 200).get('/api/v1/pods'), /no answer within 200 ms/);
    } finally {
      silent.close();
      (silent as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
    }
  });

  it('builds paths for core and group kinds, names escaped', () => {
    assert.equal(apiPath(CORE.nodes), '/api/v1/nodes');
    assert.equal(apiPath(CORE.pods, { namespace: 'shop', name: 'web 1' }), '/api/v1/namespaces/shop/pods/web%201');
    assert.equal(apiPath({ group: 'meshlet.dev', version: 'v1alpha1', plural: 'meshpolicies' }, { namespace: 'shop', name: 'p', subresource: 'status' }),
      '/apis/meshlet.dev/v1alpha1/namespaces/shop/meshpolicies/p/status');
  });
});
