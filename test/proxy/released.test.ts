// A connection capture redirected for a pod that has just been released from the mesh. The source
// agent's registry learns of the release a moment before capture's destinations set does, so such
// connections still arrive; refusing them made every release reset a connection or two (seen in the
// removal test, test/e2e/removal.test.ts). They are tunnelled as before, and the pod's own agent,
// which lets go last (workloads/release-grace.ts), serves them.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import { ReleaseGrace } from '../../src/workloads/release-grace.ts';
import { inProcessMesh, type InProcessMesh } from '../support/proxy-context.ts';
import { eventually } from '../support/wait.ts';

const TD = 'released.test';
const IP = { web: '127.0.4.11', db: '127.0.5.11', svc: '127.0.6.1' };
const doc = (port: number, dbCaptured: boolean) => `trustDomain: ${TD}
nodes: [{ name: node-a, ip: 127.0.4.1 }, { name: node-b, ip: 127.0.5.1 }]
workloads:
  - { name: web, namespace: shop, serviceAccount: web, ip: ${IP.web}, node: node-a }
  - { name: db, namespace: shop, serviceAccount: db, ip: ${IP.db}, node: node-b, captured: ${dbCaptured}, labels: { app: db } }
services:
  - { name: db, namespace: shop, clusterIP: ${IP.svc}, ports: [{ name: sql, port: 80, targetPort: ${port} }], selector: { app: db } }
`;

function echo(s: net.Socket): Promise<{ data: string; error?: string }> {
  return new Promise((resolve) => {
    let data = '';
    s.on('data', (d: Buffer) => { data += d; });
    s.on('error', (err: NodeJS.ErrnoException) => resolve({ data, error: err.code }));
    s.on('end', () => resolve({ data }));
    s.end('still here');
  });
}

describe('a destination released a moment ago', () => {
  let mesh: InProcessMesh;
  let app: net.Server;
  let port: number;

  before(async () => {
    app = net.createServer((s) => { s.on('error', () => undefined); s.pipe(s); });
    await new Promise<void>((r) => app.listen(0, IP.db, r));
    port = (app.address() as net.AddressInfo).port;
    mesh = await inProcessMesh(doc(port, true));
  });
  after(async () => {
    await mesh?.close();
    app?.close();
  });

  it('is still tunnelled to, and served by its own agent in its grace', async () => {
    // db's agent keeps it captured, leaving, for its grace; web's agent has it as released.
    const grace = new ReleaseGrace({ node: 'node-b' });
    grace.apply(parseWorkloadsFile(doc(port, true)));
    const released = parseWorkloadsFile(doc(port, false));
    mesh.applyOn('node-b', grace.apply(released));
    mesh.applyOn('node-a', released);
    const a = mesh.node('node-a');
    await eventually('node-a has db released', () => a.data.registry.findWorkload(IP.db)?.captured === false);
    assert.ok(!a.data.registry.destinations.has(IP.db), 'capture would no longer redirect it');

    assert.deepEqual(await echo(await a.connect(IP.web, { ip: IP.db, port })), { data: 'still here' }, 'the connection redirected in the window went through');
    // Its Service went with it (db was its only endpoint): a connection to the cluster IP too.
    assert.equal(a.data.registry.destinations.has(IP.svc), false);
    assert.deepEqual(await echo(await a.connect(IP.web, { ip: IP.svc, port: 80 })), { data: 'still here' }, 'the Service\'s connection went through');
    const out = await eventually('node-a\'s access line', () => a.access.find((l) => l.dst?.addr === `${IP.db}:${port}`));
    assert.equal(out.route, 'tunnel');
    assert.equal(out.outcome, 'ok', JSON.stringify(out));
    const inbound = await eventually('node-b served it', () => mesh.node('node-b').access.find((l) => l.direction === 'inbound' && l.outcome === 'ok'));
    assert.equal(inbound.src.principal, `spiffe://${TD}/ns/shop/sa/web`);
  });

  it('is delivered as plaintext by its own agent just after the grace, while capture still redirects it', async () => {
    // The grace is over on node-b: its registry drops db a moment before capture stops redirecting
    // db's inbound traffic, and node-a, whose own window ended first, sends plain TCP (the reset
    // of the removal test's CI run).
    const b = mesh.node('node-b');
    mesh.applyOn('node-b', parseWorkloadsFile(doc(port, true)));
    mesh.applyOn('node-b', parseWorkloadsFile(doc(port, false)));
    await eventually('node-b has db released', () => b.data.registry.findWorkload(IP.db)?.captured === false);
    const before = b.access.length;
    assert.deepEqual(await echo(await b.connectPlaintext(IP.web, { ip: IP.db, port })), { data: 'still here' });
    const line = await eventually('node-b\'s access line', () => b.access.slice(before).find((l) => l.dst?.addr === `${IP.db}:${port}`));
    assert.equal(line.outcome, 'ok', JSON.stringify(line));
    assert.equal(line.route, 'released');

    // Only its own node's pods, and only a moment: another node's released pod is not its to deliver.
    const a = mesh.node('node-a');
    assert.notEqual((await echo(await a.connectPlaintext(IP.web, { ip: IP.db, port }))).data, 'still here', 'node-a delivered a pod of node-b');
  });
});
