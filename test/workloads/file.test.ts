import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { WorkloadSourceError } from '../../src/errors.ts';
import { createFileSource, parseWorkloadsFile } from '../../src/workloads/file.ts';
import type { MeshSnapshot } from '../../src/workloads/model.ts';
import { WorkloadRegistry } from '../../src/workloads/registry.ts';
import { eventually } from '../support/wait.ts';

const good = `
trustDomain: cluster.local
nodes:
  - { name: node-a, ip: 10.240.0.11 }
  - { name: node-b, ip: 10.240.0.12 }
workloads:
  - { name: web, namespace: shop, serviceAccount: web, ip: 10.241.1.11, node: node-a }
  - { name: db, namespace: shop, serviceAccount: db, ip: 10.241.2.11, node: node-b, captured: true }
  - { name: legacy, namespace: old, serviceAccount: default, ip: 10.241.2.12, node: node-b, captured: false }
`;

function problems(text: string): string[] {
  try {
    parseWorkloadsFile(text);
  } catch (err) {
    assert.ok(err instanceof WorkloadSourceError, String(err));
    return err.problems;
  }
  assert.fail('expected the file to be rejected');
}

describe('workloads file', () => {
  it('parses nodes and workloads and derives SPIFFE IDs', () => {
    const s = parseWorkloadsFile(good);
    assert.equal(s.trustDomain, 'cluster.local');
    assert.equal(s.nodes.length, 2);
    assert.deepEqual(s.workloads.map((w) => [w.name, w.captured, w.spiffeId]), [
      ['web', true, 'spiffe://cluster.local/ns/shop/sa/web'],
      ['db', true, 'spiffe://cluster.local/ns/shop/sa/db'],
      ['legacy', false, 'spiffe://cluster.local/ns/old/sa/default'],
    ]);
  });

  it('lists every problem at once', () => {
    const p = problems(`
trustDomain: Bad_Domain!
nodes: [{ name: node-a, ip: nope }]
workloads:
  - { name: web, namespace: Shop, serviceAccount: web, ip: 10.0.0.1, node: node-z, captured: "yes", colour: blue }
  - { name: web2, namespace: shop, ip: 10.0.0.1, node: node-a }
`);
    const text = p.join('\n');
    for (const expected of [/trustDomain/, /nodes\[0\]\.ip: "nope"/, /workloads\[0\]\.namespace: "Shop"/, /unknown node "node-z"/,
      /captured: must be true or false/, /unknown field "colour"/, /workloads\[1\]\.serviceAccount: required/, /10\.0\.0\.1 is already used/]) {
      assert.match(text, expected);
    }
  });

  it('reads a dual-stack workload\'s IPv6 address, and rejects one that is not, or is taken', () => {
    const s = parseWorkloadsFile(good.replace('ip: 10.241.1.11,', "ip: 10.241.1.11, ipv6: 'fd00:77:1::11',"));
    assert.equal(s.workloads[0]?.ipv6, 'fd00:77:1::11');
    assert.equal(s.workloads[1] && 'ipv6' in s.workloads[1], false);
    const text = problems(good.replace('ip: 10.241.1.11,', 'ip: 10.241.1.11, ipv6: 10.241.1.12,')
      .replace('ip: 10.241.2.11,', "ip: 10.241.2.11, ipv6: 'fd00::1',").replace('ip: 10.241.2.12,', "ip: 10.241.2.12, ipv6: 'fd00::1',")).join('\n');
    assert.match(text, /workloads\[0\]\.ipv6: "10\.241\.1\.12" is not an IPv6 address/);
    assert.match(text, /workloads\[2\]\.ipv6: fd00::1 is already used by shop\/db/);
  });

  it('reads labels, namespace mTLS modes and policies', () => {
    const s = parseWorkloadsFile(`${good}
  - { name: cache, namespace: shop, serviceAccount: cache, ip: 10.241.1.12, node: node-a, labels: { app: cache, tier: backend } }
namespaces:
  - { name: shop, mtls: strict }
  - { name: old }
policies:
  - name: db-clients
    namespace: shop
    selector: { matchLabels: { app: db } }
    action: ALLOW
    rules:
      - from: [{ principals: ["spiffe://cluster.local/ns/shop/sa/web"] }]
        to: [{ ports: [5432] }]
`);
    assert.deepEqual(s.workloads.find((w) => w.name === 'cache')?.labels, { app: 'cache', tier: 'backend' });
    assert.deepEqual(s.workloads.find((w) => w.name === 'web')?.labels, {});
    assert.deepEqual(s.mtls, { shop: 'strict' });
    assert.deepEqual(s.policies.map((p) => [p.namespace, p.name, p.spec.action]), [['shop', 'db-clients', 'ALLOW']]);
  });

  it('rejects bad policies and mTLS modes with the rest of the file', () => {
    const text = problems(`${good}
namespaces: [{ name: shop, mtls: STRICT }]
policies:
  - { name: p, namespace: shop, action: PERMIT }
  - { name: p, namespace: shop, rules: [{ from: [{ ipBlocks: [not-a-cidr] }] }] }
  - { namespace: shop, colour: blue }
`).join('\n');
    for (const re of [/namespaces\[0\]\.mtls: must be strict or permissive/, /policies\[0\]\.action: "PERMIT"/, /policies\[1\]\.rules\[0\]\.from\[0\]\.ipBlocks\[0\]: "not-a-cidr" is not an IP address/,
      /policies\[1\]: duplicate policy shop\/p/, /policies\[2\]\.name: required/, /policies\[2\]: unknown field "colour"/]) assert.match(text, re);
  });

  it('rejects documents that are not YAML mappings', () => {
    assert.match(problems('a: [').join(), /not valid YAML/);
    // Where, then why; no dangling "column 1:" with the excerpt cut off.
    assert.deepEqual(problems('trustDomain: td\nnodes:\n  - name: a\n ip: [\n'), ['not valid YAML at line 4, column 1: All mapping items must start at the same column']);
    assert.match(problems('- 1\n- 2').join(), /must be a mapping/);
    assert.match(problems('trustDomain: td').join(), /nodes: required list/);
  });

  it('keeps the last good registry when the file turns bad, and picks up the next good one', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-file-'));
    const path = join(dir, 'w.yaml');
    await writeFile(path, good);
    const registry = new WorkloadRegistry('node-a');
    const errors: Error[] = [];
    const snapshots: MeshSnapshot[] = [];
    const source = createFileSource({ path, pollIntervalMs: 20 });
    try {
      await source.start({ onSnapshot: (s) => { snapshots.push(s); registry.replace(s); }, onError: (e) => errors.push(e) });
      assert.equal(registry.findWorkload('10.241.1.11')?.name, 'web');
      assert.deepEqual(registry.localCaptured().map((w) => w.name), ['web']);

      await writeFile(path, 'trustDomain: [');
      await waitFor(() => errors.length > 0);
      assert.ok(errors[0] instanceof WorkloadSourceError);
      assert.equal(registry.findWorkload('10.241.1.11')?.name, 'web', 'last good registry stays in force');

      await writeFile(path, good.replace(/  - \{ name: web,.*\n/, ''));
      await waitFor(() => snapshots.length === 2);
      assert.equal(registry.findWorkload('10.241.1.11'), undefined);
      assert.deepEqual(registry.localCaptured(), []);
    } finally {
      await source.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('fails at start when the file is missing or invalid', async () => {
    const source = createFileSource({ path: '/nonexistent/meshlet.yaml' });
    await assert.rejects(source.start({ onSnapshot: () => undefined, onError: () => undefined }), /cannot read/);
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-file-'));
    try {
      await writeFile(join(dir, 'bad.yaml'), 'trustDomain: td\nnodes: []\nworkloads: [{ name: x }]\n');
      const bad = createFileSource({ path: join(dir, 'bad.yaml') });
      await assert.rejects(bad.start({ onSnapshot: () => undefined, onError: () => undefined }), WorkloadSourceError);
      await bad.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

const waitFor = async (cond: () => boolean, ms = 3000): Promise<void> => { await eventually('the condition', cond, ms, 10); };

describe('services in the workloads file', () => {
  const withServices = (services: string, extraWorkloads = '') => `
trustDomain: cluster.local
nodes: [{ name: node-a, ip: 10.240.0.11 }, { name: node-b, ip: 10.240.0.12 }]
workloads:
  - { name: api-1, namespace: shop, serviceAccount: api, ip: 10.241.1.21, node: node-a, labels: { app: api }, ports: [{ name: http, port: 8080 }] }
  - { name: api-2, namespace: shop, serviceAccount: api, ip: 10.241.2.21, node: node-b, labels: { app: api }, ports: [{ name: http, port: 9090 }] }
  - { name: api-old, namespace: shop, serviceAccount: api, ip: 10.241.2.22, node: node-b, labels: { app: api } }
  - { name: web, namespace: shop, serviceAccount: web, ip: 10.241.1.11, node: node-a, labels: { app: web } }
  - { name: api-x, namespace: other, serviceAccount: api, ip: 10.241.1.31, node: node-a, labels: { app: api } }
${extraWorkloads}
services:
${services}
`;

  it('selects endpoints by labels in the service\'s namespace and resolves named target ports per endpoint', () => {
    const snap = parseWorkloadsFile(withServices(`
  - name: api
    namespace: shop
    clusterIP: 10.96.0.10
    ports: [{ name: http, port: 80, targetPort: http }, { name: admin, port: 81, targetPort: 7000 }]
    selector: { app: api }
    trafficDistribution: PreferClose`));
    const [api] = snap.services;
    assert.ok(api);
    assert.equal(api.clusterIP, '10.96.0.10');
    assert.equal(api.preferClose, true);
    assert.deepEqual(api.ports, [{ name: 'http', port: 80 }, { name: 'admin', port: 81 }]);
    assert.deepEqual(api.endpoints.map((e) => [e.ip, e.node, e.ports]), [
      ['10.241.1.21', 'node-a', { http: 8080, admin: 7000 }],
      ['10.241.2.21', 'node-b', { http: 9090, admin: 7000 }],
      // No container port named http: it serves the numeric port only.
      ['10.241.2.22', 'node-b', { admin: 7000 }],
    ]);
    const registry = new WorkloadRegistry('node-a');
    registry.replace(snap);
    assert.equal(registry.findService('10.96.0.10', 80)?.port.name, 'http');
    assert.equal(registry.findService('::ffff:10.96.0.10', 81)?.service.name, 'api');
    assert.equal(registry.findService('10.96.0.10', 82), undefined);
  });

  it('takes listed endpoints for a service without selector (workload names or addresses outside the mesh), and headless services', () => {
    const snap = parseWorkloadsFile(withServices(`
  - { name: pinned, namespace: shop, clusterIP: 10.96.0.11, ports: [{ port: 5432 }], endpoints: [api-2, 192.0.2.7] }
  - { name: api-headless, namespace: shop, clusterIP: None, ports: [{ port: 80 }], selector: { app: api } }
  - { name: nothing, namespace: shop, clusterIP: 10.96.0.12, ports: [{ port: 80 }], selector: {} }`));
    const [pinned, headless, nothing] = snap.services;
    assert.deepEqual(pinned?.endpoints.map((e) => [e.ip, e.node, e.ports]), [['10.241.2.21', 'node-b', { '': 5432 }], ['192.0.2.7', undefined, { '': 5432 }]]);
    assert.equal(headless?.clusterIP, undefined);
    assert.equal(nothing?.endpoints.length, 0, 'an empty selector selects nothing, as in Kubernetes');
    const registry = new WorkloadRegistry('node-a');
    registry.replace(snap);
    assert.equal(registry.findService('10.96.0.11', 5432)?.service.name, 'pinned');
  });

  it('lists every problem of a bad services section', () => {
    const found = problems(withServices(`
  - { name: Bad_Name, namespace: shop, clusterIP: 10.96.0.300, ports: [] }
  - { name: a, namespace: shop, clusterIP: 10.96.0.20, ports: [{ port: 80 }, { port: 80, targetPort: -1 }], selector: { app: api }, endpoints: [api-1] }
  - { name: b, namespace: shop, clusterIP: 10.96.0.20, ports: [{ port: 80 }], endpoints: [nobody], trafficDistribution: Anywhere, extra: 1 }`));
    for (const expected of [
      /services\[0\]\.name: "Bad_Name" is not a DNS label/,
      /services\[0\]\.clusterIP: "10\.96\.0\.300" is neither an IPv4 address nor None/,
      /services\[0\]\.ports: at least one port/,
      /services\[1\]\.ports\[0\]\.name: required when a service has several ports/,
      /services\[1\]\.ports\[1\]\.targetPort: must be a port number or a port name/,
      /services\[1\]\.ports\[1\]\.port: duplicate port 80/,
      /services\[1\]: selector and endpoints exclude each other/,
      /services\[2\]\.clusterIP: 10\.96\.0\.20 is already shop\/a's/,
      /services\[2\]\.endpoints\[0\]: "nobody" is neither a workload of shop nor an IPv4 address/,
      /services\[2\]\.trafficDistribution: only PreferClose is supported/,
      /services\[2\]: unknown field "extra"|services\[2\]\.extra/,
    ]) assert.ok(found.some((p) => expected.test(p)), `${expected} not in:\n${found.join('\n')}`);
  });
});
