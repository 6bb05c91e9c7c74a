// The seam between the agent's control plane and its data plane (src/proxy/snapshot.ts): the data
// plane imports nothing of the control plane, and a snapshot is plain data that a data plane in a
// worker thread serves from, certificates and policies included.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import type { CertificateManager } from '../../src/identity/certs.ts';
import { Identities } from '../../src/proxy/identities.ts';
import type { DataPlaneSnapshot } from '../../src/proxy/snapshot.ts';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import { DataPlaneWorkers } from '../../src/proxy/workers.ts';
import { issuedIdentities, testSettings } from '../support/proxy-context.ts';

/**
 * What the data plane may import besides itself: pure libraries (types, parsing, policy matching,
 * the mesh index) and socket calls. Everything else of src/ is the control plane.
 */
const SHARED = new Set([
  'src/errors.ts', 'src/validate.ts', 'src/rate-limit.ts', 'src/backoff.ts', 'src/collect-garbage.ts', 'src/capture/socket.ts',
  'src/identity/spiffe.ts', 'src/identity/pem.ts', 'src/policy/hook.ts', 'src/policy/spec.ts', 'src/policy/compile.ts',
  'src/policy/engine.ts', 'src/telemetry/connections.ts', 'src/telemetry/log.ts', 'src/telemetry/batch.ts', 'src/telemetry/tcp-series.ts', 'src/workloads/model.ts', 'src/workloads/registry.ts',
]);
/** Packages the data plane may load (a worker must not carry the Kubernetes client, forge or prom-client). */
const PACKAGES = new Set(['pino', 'koffi']);

describe('the control plane / data plane seam', () => {
  it('src/proxy/ reaches no control-plane module and no control-plane package, however indirectly', () => {
    const root = path.resolve(import.meta.dirname, '../..');
    const start = fs.readdirSync(path.join(root, 'src/proxy'), { recursive: true }).map(String).filter((f) => f.endsWith('.ts')).map((f) => `src/proxy/${f}`);
    const via = new Map<string, string>(start.map((f) => [f, f]));
    const queue = [...start];
    const offending: string[] = [];
    while (queue.length > 0) {
      const file = queue.pop()!;
      const text = fs.readFileSync(path.join(root, file), 'utf8');
      const specs = [...text.matchAll(/^(?:import|export)\s[^;]*?\bfrom\s+'([^']+)'/gm), ...text.matchAll(/\bimport\(\s*'([^']+)'\s*\)/g)].map((m) => m[1]!);
      for (const spec of specs) {
        if (!spec.startsWith('.')) {
          const pkg = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
          if (!pkg.startsWith('node:') && !PACKAGES.has(pkg)) offending.push(`${via.get(file)} -> ${spec}`);
          continue;
        }
        const target = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec));
        if (via.has(target)) continue;
        via.set(target, `${via.get(file)} -> ${target}`);
        if (!target.startsWith('src/proxy/') && !SHARED.has(target)) offending.push(via.get(target)!);
        else queue.push(target);
      }
    }
    assert.ok(start.length > 15, `found the data plane's modules (${start.length})`);
    assert.deepEqual(offending, []);
  });

  describe('a data plane in a worker thread, fed with snapshots', () => {
    const TD = 'seam.test';
    const IP = { web: '127.0.6.11', db: '127.0.6.21' };
    const yaml = (extra = '') => `trustDomain: ${TD}
nodes: [{ name: node-a, ip: 127.0.6.1 }, { name: node-b, ip: 127.0.6.2 }]
workloads:
  - { name: web, namespace: shop, serviceAccount: web, ip: ${IP.web}, node: node-a, labels: { app: web } }
  - { name: db, namespace: shop, serviceAccount: db, ip: ${IP.db}, node: node-b, labels: { app: db } }
${extra}`;
    const silent = pino({ level: 'silent' });
    let worker: DataPlaneWorkers;
    let certsA: CertificateManager;
    let certsB: CertificateManager;
    let app: net.Server;
    let appPort: number;
    let tunnelPort: number;
    let generation = 0;
    /** node-b's snapshot, as its agent would publish it: the mesh and node-b's identities. */
    const snapshot = (text: string): DataPlaneSnapshot => ({ generation: ++generation, meshGeneration: generation, mesh: parseWorkloadsFile(text), identities: certsB.materials() });
    before(async () => {
      [certsA, certsB] = await issuedIdentities(TD, [`spiffe://${TD}/ns/shop/sa/web`], [`spiffe://${TD}/ns/shop/sa/db`]) as [CertificateManager, CertificateManager];
      app = net.createServer((s) => { s.on('error', () => undefined); s.pipe(s); });
      appPort = await new Promise<number>((resolve) => app.listen(0, IP.db, () => resolve((app.address() as net.AddressInfo).port)));
      const free = net.createServer();
      tunnelPort = await new Promise<number>((resolve) => free.listen(0, () => resolve((free.address() as net.AddressInfo).port)));
      await new Promise((r) => free.close(r));
      // One worker thread, started as the agent starts them; only its original destination is injected.
      worker = new DataPlaneWorkers({
        workers: 1, log: silent, logBase: {}, entry: new URL('../support/workers-entry.ts', import.meta.url),
        settings: testSettings('node-b', tunnelPort, { ports: { outbound: 0, inboundPlaintext: 0, tunnel: tunnelPort }, accessLog: false }),
      });
      await worker.listen();
    });
    after(async () => {
      await worker?.close(() => 0);
      app?.close();
      certsA?.close();
      certsB?.close();
    });
    /** A CONNECT from web (node-a's identity) to db's tunnel port: the HTTP status and the echo. */
    async function connectAsWeb(): Promise<{ status: string; echo?: string }> {
      const identities = new Identities();
      identities.update(certsA.materials());
      const session = http2.connect(`https://${IP.db}:${tunnelPort}`, {
        createConnection: () => tls.connect({ host: IP.db, port: tunnelPort, secureContext: identities.secureContextFor(`spiffe://${TD}/ns/shop/sa/web`), ALPNProtocols: ['h2'], rejectUnauthorized: false }),
      });
      session.on('error', () => undefined);
      try {
        return await new Promise((resolve) => {
          const s = session.request({ ':method': 'CONNECT', ':authority': `${IP.db}:${appPort}` }, { endStream: false });
          s.on('error', () => resolve({ status: 'error' }));
          s.on('response', (h) => {
            const status = `${h[':status']} ${h['x-meshlet-error'] ?? ''}`.trim();
            if (status !== '200') return resolve({ status });
            s.once('data', (d: Buffer) => resolve({ status, echo: d.toString() }));
            s.write('across the seam');
          });
        });
      } finally {
        session.destroy();
      }
    }

    it('serves a tunnel with the key material and mesh the snapshot carried, after a structured clone', async () => {
      const first = snapshot(yaml());
      assert.deepEqual(structuredClone(first), first, 'a snapshot survives structured cloning unchanged');
      worker.apply(first);
      await worker.dump(); // answered after the snapshot, which came first on the same port
      const r = await connectAsWeb();
      assert.deepEqual(r, { status: '200', echo: 'across the seam' });
    });

    it('enforces the policies of the next snapshot on the next CONNECT', async () => {
      worker.apply(snapshot(yaml(`policies:
  - { name: no-web, namespace: shop, selector: { matchLabels: { app: db } }, action: DENY, rules: [{ from: [{ principals: ['spiffe://${TD}/ns/shop/sa/web'] }] }] }
`)));
      await worker.dump();
      assert.equal((await connectAsWeb()).status, '403 policy_denied');
      const denials = (await worker.dump()).policy.decisions.filter((d) => d.action === 'deny');
      assert.deepEqual(denials.map((d) => d.policy), ['shop/no-web'], 'the worker counted the denial under the snapshot\'s policy');
    });

    it('refuses the tunnel once a snapshot no longer carries the destination\'s certificate', async () => {
      certsB.reconcile([]);
      worker.apply(snapshot(yaml()));
      await worker.dump();
      assert.equal((await connectAsWeb()).status, 'error', 'no handshake without the destination\'s certificate');
    });
  });
});
