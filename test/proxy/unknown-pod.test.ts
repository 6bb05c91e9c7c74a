// The controller-away rule in process (outbound.ts, connectUnknownPod): node-a's table lacks a pod
// of node-b, as when the address controller was away when it started, and gives the cluster's pod
// ranges. A connection to it is tunnelled and takes the identity node-b's agent presents; an
// address in the ranges where nothing answers at the tunnel port is never sent plaintext by an
// agent that cannot dial as the pod; a tunnel port that answers but fails the handshake refuses.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import { exchange as exchangeAll, inProcessMesh, type InProcessMesh } from '../support/proxy-context.ts';
import { eventually } from '../support/wait.ts';

const TD = 'unknown-pod.test';
const id = (sa: string) => `spiffe://${TD}/ns/shop/sa/${sa}`;
const IP = { web: '127.0.5.11', db: '127.0.6.11', plain: '127.0.6.30', broken: '127.0.6.40', away: '127.0.9.30' };
const RANGES = ['127.0.5.0/24', '127.0.6.0/24'];

const doc = `trustDomain: ${TD}
nodes: [{ name: node-a, ip: 127.0.5.1 }, { name: node-b, ip: 127.0.6.1 }]
workloads:
  - { name: web, namespace: shop, serviceAccount: web, ip: ${IP.web}, node: node-a }
  - { name: db, namespace: shop, serviceAccount: db, ip: ${IP.db}, node: node-b }
`;

/** An application that counts who connected and echoes. */
function app(ip: string, port: number): Promise<net.Server & { accepted: number }> {
  const server = Object.assign(net.createServer((s) => {
    server.accepted++;
    s.on('error', () => undefined);
    s.write('hello\n');
    s.pipe(s);
  }), { accepted: 0 });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, ip, () => resolve(server));
  });
}

/** The data that came back. */
const exchange = async (s: net.Socket, text: string): Promise<string> => (await exchangeAll(s, text)).data;

describe('a pod the table does not know, in the pod ranges', () => {
  let mesh: InProcessMesh;
  let port: number;
  const servers: net.Server[] = [];

  before(async () => {
    const db = await app(IP.db, 0);
    servers.push(db);
    port = (db.address() as net.AddressInfo).port;
    mesh = await inProcessMesh(doc);
    // node-a has not heard of db; node-b, its own node, has.
    const full = parseWorkloadsFile(doc);
    mesh.applyOn('node-a', { ...full, workloads: full.workloads.filter((w) => w.name !== 'db'), podRanges: RANGES });
    await eventually('node-a without db', () => mesh.node('node-a').data.registry.findWorkload(IP.db) === undefined);
  });
  after(async () => {
    await mesh?.close();
    for (const s of servers) s.close();
  });

  it('is tunnelled, as the identity its node\'s agent presents, and that agent decides', async () => {
    const a = mesh.node('node-a');
    const data = await exchange(await a.connect(IP.web, { ip: IP.db, port }), 'through');
    assert.equal(data, 'hello\nthrough');
    const out = await eventually('node-a\'s line', () => a.access.find((l) => l.dst?.addr === `${IP.db}:${port}`));
    assert.equal(out.route, 'tunnel');
    assert.equal(out.dst.principal, id('db'), 'the identity node-b vouched for');
    const inbound = await eventually('node-b\'s inbound line', () => mesh.node('node-b').access.find((l) => l.direction === 'inbound' && l.src?.principal === id('web')));
    assert.equal(inbound.dst.workload, 'shop/db');
  });

  it('where nothing answers at its tunnel port, is not dialled as the node (no source preservation here)', async () => {
    const plain = await app(IP.plain, port);
    servers.push(plain);
    const a = mesh.node('node-a');
    const data = await exchange(await a.connect(IP.web, { ip: IP.plain, port }), 'hi');
    assert.equal(data, '');
    const line = await eventually('the refusal', () => a.access.find((l) => l.dst?.addr === `${IP.plain}:${port}`));
    assert.equal(line.error, 'outside_mesh');
    assert.equal(line.route, 'passthrough');
    assert.equal(plain.accepted, 0, 'the agent dialled the pod as the node');
  });

  it('where the tunnel port answers but the handshake fails, is refused: no plaintext', async () => {
    const broken = await app(IP.broken, port);
    servers.push(broken);
    const tunnelPort = net.createServer((s) => s.destroy());
    servers.push(tunnelPort);
    await new Promise<void>((r) => tunnelPort.listen(mesh.tunnelPort, IP.broken, r));
    const a = mesh.node('node-a');
    assert.equal(await exchange(await a.connect(IP.web, { ip: IP.broken, port }), 'hi'), '');
    const line = await eventually('the refusal', () => a.access.find((l) => l.dst?.addr === `${IP.broken}:${port}`));
    assert.equal(line.route, 'tunnel');
    assert.equal(line.error, 'upstream_connect');
    assert.equal(broken.accepted, 0, 'plaintext reached the pod');
  });

  it('outside the pod ranges, is outside the mesh as before', async () => {
    const a = mesh.node('node-a');
    assert.equal(await exchange(await a.connect(IP.web, { ip: IP.away, port }), 'hi'), '');
    const line = await eventually('the refusal', () => a.access.find((l) => l.dst?.addr === `${IP.away}:${port}`));
    assert.equal(line.error, 'outside_mesh');
    assert.equal(line.route, undefined);
  });
});
