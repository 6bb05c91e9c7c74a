// The CA's Kubernetes side against the API stand-in: TokenReview and pod checks with real request
// and response shapes, the root Secret and the bundle ConfigMap.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, beforeEach, describe, it } from 'node:test';
import pino from 'pino';
import { bundlePublisher, createKubernetesAuthorizer, SecretRootStore } from '../../src/ca/kubernetes.ts';
import { CaService } from '../../src/ca/server.ts';
import { AuthorizerUnavailableError, IdentityNotAllowedError, TokenRejectedError } from '../../src/errors.ts';
import { parseBundle } from '../../src/identity/pem.ts';
import { ensureRoot, rotateRoot } from '../../src/identity/roots.ts';
import { ApiStandIn, podObject } from '../support/apiserver.ts';
import { caClient, postCsr, workloadCsr } from '../support/ca.ts';
import { eventually } from '../support/wait.ts';

const log = pino({ level: 'silent' });
const TD = 'cluster.local';
const AGENT = 'system:serviceaccount:meshlet-system:meshlet-agent';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;
const parseBundleCount = (pem: string) => parseBundle(pem).length;

describe('Kubernetes authorization', () => {
  let api: ApiStandIn;
  before(async () => {
    api = await ApiStandIn.start();
    // A token from a 1.30+ cluster (node-name claim), one from an older cluster (pod claims only),
    // and the wrong ones.
    api.tokens.set('agent-node-a', { username: AGENT, audiences: ['meshlet-ca'], extra: {
      'authentication.kubernetes.io/node-name': ['node-a'], 'authentication.kubernetes.io/pod-name': ['meshlet-agent-aaaaa'],
    } });
    api.tokens.set('agent-old-cluster', { username: AGENT, audiences: ['meshlet-ca'], extra: {
      'authentication.kubernetes.io/pod-name': ['meshlet-agent-bbbbb'], 'authentication.kubernetes.io/pod-uid': ['uid-agent-b'],
    } });
    api.tokens.set('agent-expired', { username: AGENT, audiences: ['meshlet-ca'], expired: true });
    api.tokens.set('agent-other-audience', { username: AGENT, audiences: ['https://kubernetes.default.svc'] });
    api.tokens.set('someone-else', { username: 'system:serviceaccount:shop:web', audiences: ['meshlet-ca'], extra: { 'authentication.kubernetes.io/node-name': ['node-a'] } });
    api.tokens.set('agent-unbound', { username: AGENT, audiences: ['meshlet-ca'] });
    api.put('pods', { ...podObject({ name: 'meshlet-agent-bbbbb', namespace: 'meshlet-system', node: 'node-b', serviceAccount: 'meshlet-agent' }), metadata: { name: 'meshlet-agent-bbbbb', namespace: 'meshlet-system', uid: 'uid-agent-b' } });
    api.put('pods', podObject({ name: 'web-1', namespace: 'shop', node: 'node-a', serviceAccount: 'web', ip: '10.1.0.10' }));
    api.put('pods', podObject({ name: 'db-1', namespace: 'shop', node: 'node-b', serviceAccount: 'db', ip: '10.1.0.20' }));
    api.put('pods', podObject({ name: 'batch-1', namespace: 'shop', node: 'node-a', serviceAccount: 'batch', phase: 'Succeeded' }));
    api.put('pods', podObject({ name: 'hostnet', namespace: 'shop', node: 'node-a', serviceAccount: 'node-exporter', hostNetwork: true }));
    // What a compromised kubelet on node-a can create: a mirror pod in any namespace, naming any
    // service account or none.
    api.put('pods', podObject({ name: 'static-vault', namespace: 'bank', node: 'node-a', serviceAccount: 'vault', annotations: { 'kubernetes.io/config.mirror': 'x' } }));
    const bare = podObject({ name: 'static-bare', namespace: 'bank', node: 'node-a', annotations: { 'kubernetes.io/config.mirror': 'y' } });
    delete (bare.spec as { serviceAccountName?: string }).serviceAccountName;
    api.put('pods', bare);
  });
  after(() => api.close());
  beforeEach(() => { api.down = false; });

  const authorizer = () => createKubernetesAuthorizer({ kubeConfig: api.kubeConfig(), agentNamespace: 'meshlet-system', agentServiceAccount: 'meshlet-agent', log });

  it('finds the node of an agent token, from the node-name claim or the bound pod', async () => {
    const authz = authorizer();
    await authz.start();
    assert.equal(authz.ready(), true);
    assert.deepEqual(await authz.authenticate('agent-node-a'), { node: 'node-a', subject: AGENT });
    assert.deepEqual(await authz.authenticate('agent-old-cluster'), { node: 'node-b', subject: AGENT });
    const review = api.requests.find((r) => r.path === '/apis/authentication.k8s.io/v1/tokenreviews');
    assert.ok(review, 'a TokenReview was posted');
  });

  it('refuses forged, expired, wrong-audience, foreign and unbound tokens', async () => {
    const authz = authorizer();
    const cases: Array<[string, RegExp]> = [
      ['forged', /invalid bearer token/],
      ['agent-expired', /has expired/],
      ['agent-other-audience', /invalid for the target audiences/],
      ['someone-else', /belongs to system:serviceaccount:shop:web, not the meshlet agent/],
      ['agent-unbound', /not bound to a pod/],
    ];
    for (const [token, re] of cases) {
      await assert.rejects(authz.authenticate(token), (err: unknown) => err instanceof TokenRejectedError && re.test(err.message), token);
    }
  });

  it('allows only identities of live pods on the token\'s node, asking the API with a node field selector', async () => {
    const authz = authorizer();
    const nodeA = { node: 'node-a', subject: AGENT };
    await authz.authorize(nodeA, WEB);
    assert.ok(api.requests.some((r) => r.path.startsWith('/api/v1/namespaces/shop/pods?') && decodeURIComponent(r.path).includes('fieldSelector=spec.nodeName=node-a')));
    for (const id of [DB, `spiffe://${TD}/ns/shop/sa/batch`, `spiffe://${TD}/ns/shop/sa/node-exporter`, `spiffe://${TD}/ns/other/sa/web`]) {
      await assert.rejects(authz.authorize(nodeA, id), IdentityNotAllowedError, id);
    }
    await authz.authorize({ node: 'node-b', subject: AGENT }, DB);
  });

  it('refuses identities of mirror pods, and "default" for a pod without a service account', async () => {
    const authz = authorizer();
    const nodeA = { node: 'node-a', subject: AGENT };
    for (const id of [`spiffe://${TD}/ns/bank/sa/vault`, `spiffe://${TD}/ns/bank/sa/default`]) {
      await assert.rejects(authz.authorize(nodeA, id), IdentityNotAllowedError, id);
    }
  });

  it('says it cannot decide while the API is down, and is not ready', async () => {
    const authz = authorizer();
    api.down = true;
    await authz.start();
    assert.equal(authz.ready(), false);
    await assert.rejects(authz.authenticate('agent-node-a'), AuthorizerUnavailableError);
    await assert.rejects(authz.authorize({ node: 'node-a', subject: AGENT }, WEB), AuthorizerUnavailableError);
    api.down = false;
    await authz.authenticate('agent-node-a');
    assert.equal(authz.ready(), true);
  });

  it('keeps the root in a Secret it creates once and never overwrites, and rotates it there', async () => {
    const store = new SecretRootStore(api.kubeConfig(), 'meshlet-system', 'meshlet-ca-root');
    const first = await ensureRoot(store, TD);
    assert.equal(first.created, true);
    const secret = api.get('secrets', 'meshlet-system', 'meshlet-ca-root') as any;
    assert.ok(secret.data['ca.key'] && secret.data['ca.crt'], 'key and certificate stored base64 in data');
    const again = await ensureRoot(new SecretRootStore(api.kubeConfig(), 'meshlet-system', 'meshlet-ca-root'), TD);
    assert.equal(again.created, false);
    assert.equal(again.set.signingFingerprint, first.set.signingFingerprint);

    const prepared = await rotateRoot(store, 'prepare');
    assert.equal(parseBundleCount(prepared.trustBundlePem), 2);
    // Someone else changes the Secret between our read and our write: the write is refused.
    const racer = new SecretRootStore(api.kubeConfig(), 'meshlet-system', 'meshlet-ca-root');
    await racer.read();
    await rotateRoot(store, 'activate');
    await assert.rejects(racer.replace({ 'ca.key': 'x', 'ca.crt': 'y' }), /changed while it was being rotated/);
  });

  it('publishes the trust bundle in a ConfigMap, and the CA service signs for agents with projected tokens', async () => {
    const store = new SecretRootStore(api.kubeConfig(), 'meshlet-system', 'meshlet-ca-root-2');
    const { set } = await ensureRoot(store, TD);
    const service = await CaService.start({
      store, log, authorizer: authorizer(), certTtlMs: 3_600_000, servingNames: ['127.0.0.1'], maxBodyBytes: 16_384,
      ratePerSecond: 1000, burst: 1000, reloadMs: 100,
      onRoots: bundlePublisher(api.kubeConfig(), 'meshlet-system', 'meshlet-trust-bundle', log),
    });
    await service.listen(0, '127.0.0.1');
    const url = `https://127.0.0.1:${(service.server.address() as { port: number }).port}`;
    const client = caClient(set.trustBundlePem);
    try {
      const cm = api.get('configmaps', 'meshlet-system', 'meshlet-trust-bundle') as any;
      assert.equal(cm.data['trust-bundle.pem'], set.trustBundlePem);
      assert.equal(Object.keys(cm.data).some((k) => k.endsWith('.key')), false, 'no key in the ConfigMap');

      const ok = await postCsr(url, client, { token: 'agent-node-a', csr: await workloadCsr(WEB) });
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      assert.ok(new X509Certificate(ok.body.certificateChain).verify(new X509Certificate(set.signing.certPem).publicKey));
      const other = await postCsr(url, client, { token: 'agent-node-a', csr: await workloadCsr(DB) });
      assert.equal(other.status, 403);
      assert.equal(other.body.error.code, 'identity_not_allowed');
      const expired = await postCsr(url, client, { token: 'agent-expired', csr: await workloadCsr(WEB) });
      assert.equal(expired.status, 401);
      assert.match(expired.body.error.message, /expired/);
      api.down = true;
      const down = await postCsr(url, client, { token: 'agent-node-a', csr: await workloadCsr(WEB) });
      assert.equal(down.status, 503);
      assert.equal(down.body.error.code, 'authz_unavailable');
      api.down = false;

      await rotateRoot(store, 'prepare');
      const deadline = Date.now() + 5_000;
      while (parseBundleCount((api.get('configmaps', 'meshlet-system', 'meshlet-trust-bundle') as any).data['trust-bundle.pem']) !== 2) {
        if (Date.now() > deadline) throw new Error('the ConfigMap did not follow the rotation');
        await new Promise((r) => setTimeout(r, 50));
      }
    } finally {
      api.down = false;
      await client.close();
      await service.close();
    }
  });

  it('runs as `meshlet ca serve --kubernetes` and rotates with `meshlet ca rotate --kubernetes`', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-kc-'));
    const kubeconfig = join(dir, 'kubeconfig');
    await writeFile(kubeconfig, api.kubeConfig().exportConfig());
    const port = await freePort();
    const cli = fileURLToPath(new URL('../../src/cli.ts', import.meta.url));
    const child = spawn(process.execPath, [cli, 'ca', 'serve', '--kubernetes', '--kubeconfig', kubeconfig, '--namespace', 'cli-test',
      '--listen-address', '127.0.0.1', '--port', String(port), '--reload', '200ms'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const exited = new Promise((r) => child.once('exit', r));
    try {
      const bundleRoots = () => {
        const cm = api.get('configmaps', 'cli-test', 'meshlet-trust-bundle') as any;
        return cm ? parseBundleCount(cm.data['trust-bundle.pem']) : 0;
      };
      await until(() => out.includes('CA listening'), () => out);
      assert.match(out, /no root found: created one/);
      assert.ok(api.get('secrets', 'cli-test', 'meshlet-ca-root'), 'root Secret created');
      assert.equal(bundleRoots(), 1);
      // Not spawnSync: the API stand-in answering the CLI runs in this process.
      const r = await run(process.execPath, [cli, 'ca', 'rotate', 'prepare', '--kubernetes', '--kubeconfig', kubeconfig, '--namespace', 'cli-test']);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /2 root\(s\) trusted/);
      await until(() => bundleRoots() === 2, () => out);
    } finally {
      child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('keeps to --memory-target: says so in its metrics and serves on', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-kc-'));
    const kubeconfig = join(dir, 'kubeconfig');
    await writeFile(kubeconfig, api.kubeConfig().exportConfig());
    const [port, metricsPort] = [await freePort(), await freePort()];
    const cli = fileURLToPath(new URL('../../src/cli.ts', import.meta.url));
    // 40 MiB: below what any CA process holds, so it is pressed as soon as it is up.
    const child = spawn(process.execPath, [cli, 'ca', 'serve', '--kubernetes', '--kubeconfig', kubeconfig, '--namespace', 'mem-test',
      '--listen-address', '127.0.0.1', '--port', String(port), '--metrics-address', '127.0.0.1', '--metrics-port', String(metricsPort),
      '--memory-target', '40'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const exited = new Promise((r) => child.once('exit', r));
    try {
      await until(() => out.includes('near the memory target'), () => out);
      const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      assert.match(metrics, /^meshlet_memory_pressed 1$/m);
      assert.match(metrics, /^meshlet_memory_pressed_total [1-9]/m);
      // Pressed, it still answers: the trust bundle over its TLS port.
      const bundle = await httpsGet(`https://127.0.0.1:${port}/v1/trust-bundle`);
      assert.equal(bundle.status, 200);
      assert.equal(parseBundleCount((JSON.parse(bundle.body) as { trustBundle: string }).trustBundle), 1);
    } finally {
      child.kill('SIGTERM');
      await exited;
      await rm(dir, { recursive: true, force: true });
    }
  });
});

async function until(cond: () => boolean, explain: () => string, timeoutMs = 15_000): Promise<void> {
  await eventually('the condition', cond, timeoutMs).catch((err: Error) => { throw new Error(`${err.message}; output:\n${explain()}`); });
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** A GET over TLS to the CA's own certificate (its root is not what this test checks). */
function httpsGet(url: string): Promise<{ status: number | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    https.get(url, { rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

function run(cmd: string, args: string[]): Promise<{ status: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += d; });
    child.once('exit', (status) => resolve({ status, stderr }));
  });
}
