import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parse, stringify } from 'yaml';
import { checkConnection } from '../../src/policy/check.ts';
import { formatSuggestions, type Observed, observedConnections, suggestPolicies } from '../../src/policy/suggest.ts';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';

const TD = 'cluster.local';
const id = (sa: string) => `spiffe://${TD}/ns/shop/sa/${sa}`;
const WORKLOADS = `trustDomain: ${TD}
nodes: [{ name: node-a, ip: 10.0.0.1 }, { name: node-b, ip: 10.0.0.2 }]
workloads:
  - { name: web-1, namespace: shop, serviceAccount: web, ip: 10.1.0.1, node: node-a, labels: { app: web } }
  - { name: api-1, namespace: shop, serviceAccount: api, ip: 10.1.0.2, node: node-a, labels: { app: api, tier: back } }
  - { name: db-1, namespace: shop, serviceAccount: db, ip: 10.1.0.3, node: node-b, labels: { app: db, tier: back, pod-template-hash: aaa } }
  - { name: db-2, namespace: shop, serviceAccount: db, ip: 10.1.0.4, node: node-b, labels: { app: db, tier: back, pod-template-hash: bbb } }
  - { name: scraper, namespace: ops, serviceAccount: scraper, ip: 10.1.0.9, node: node-a, captured: false }
`;
const snapshot = parseWorkloadsFile(WORKLOADS);

/** An access line as an agent writes it (telemetry/connections.ts). */
const line = (o: { reporter?: string; route?: string; src: object; dst: object; outcome?: string }) =>
  JSON.stringify({ level: 30, scope: 'access', direction: o.reporter === 'source' ? 'outbound' : 'inbound', reporter: o.reporter ?? 'destination', route: o.route ?? 'inbound', outcome: o.outcome ?? 'ok', ...o });

describe('policy suggest', () => {
  it('learns from the destination\'s access lines of connections that went through', () => {
    const text = [
      line({ src: { ip: '10.1.0.1', principal: id('web') }, dst: { addr: '10.1.0.3:5432', workload: 'shop/db-1', namespace: 'shop' } }),
      line({ reporter: 'source', route: 'tunnel', src: { ip: '10.1.0.1', principal: id('web') }, dst: { addr: '10.1.0.3:6000', workload: 'shop/db-1', namespace: 'shop' } }),
      line({ reporter: 'source', route: 'local', src: { ip: '10.1.0.1', principal: id('web') }, dst: { addr: '10.1.0.2:8080', workload: 'shop/api-1', namespace: 'shop' } }),
      line({ src: { ip: '10.1.0.9' }, dst: { addr: '10.1.0.4:9187', workload: 'shop/db-2', namespace: 'shop' }, outcome: 'reset' }),
      line({ src: { ip: '10.1.0.1', principal: id('web') }, dst: { addr: '10.1.0.3:22', workload: 'shop/db-1', namespace: 'shop' }, outcome: 'error' }),
      JSON.stringify({ level: 30, scope: 'admin', msg: 'log level changed' }),
      'not json at all',
      line({ src: {}, dst: { addr: '10.1.0.3:5432', workload: 'shop/db-1', namespace: 'shop' } }),
    ].join('\n');
    const { seen, skipped } = observedConnections(text);
    assert.deepEqual(seen, [
      { namespace: 'shop', workload: 'db-1', port: 5432, source: { principal: id('web') } },
      { namespace: 'shop', workload: 'api-1', port: 8080, source: { principal: id('web') } },
      { namespace: 'shop', workload: 'db-2', port: 9187, source: { ip: '10.1.0.9' } },
    ]);
    assert.equal(skipped, 2, 'the line that is not JSON and the one without a source');
  });

  it('admits exactly the sources seen on each port, and nothing else', () => {
    const seen: Observed[] = [
      { namespace: 'shop', workload: 'db-1', port: 5432, source: { principal: id('web') } },
      { namespace: 'shop', workload: 'db-2', port: 5432, source: { principal: id('api') } },
      { namespace: 'shop', workload: 'db-1', port: 9187, source: { ip: '10.1.0.9' } },
      { namespace: 'shop', workload: 'db-2', port: 9187, source: { principal: id('api') } },
      { namespace: 'shop', workload: 'api-1', port: 8080, source: { principal: id('web') } },
    ];
    const { policies, notes } = suggestPolicies(seen, snapshot);
    assert.deepEqual(notes, []);
    assert.deepEqual(policies.map((p) => [p.namespace, p.name, p.spec.selector.matchLabels]), [
      ['shop', 'allow-api-observed', { app: 'api', tier: 'back' }],
      ['shop', 'allow-db-observed', { app: 'db', tier: 'back' }],
    ], 'one per destination identity, selected by the labels its pods share (not pod-template-hash)');
    assert.deepEqual(policies[1]!.spec.rules, [
      { from: [{ principals: [id('api'), id('web')] }], to: [{ ports: [5432] }] },
      { from: [{ principals: [id('api')] }, { ipBlocks: ['10.1.0.9/32'] }], to: [{ ports: [9187] }] },
    ]);

    // Applied, they decide as the agents would: what was seen passes, anything else is denied.
    const applied = { ...snapshot, policies: policies.map((p) => ({ namespace: p.namespace, name: p.name, spec: p.spec as unknown as Record<string, unknown> })) };
    const allowed = (from: string, to: string) => checkConnection(applied, from, to).decision.allowed;
    assert.equal(allowed(id('web'), 'shop/db-1:5432'), true);
    assert.equal(allowed(id('api'), 'shop/db-2:5432'), true);
    assert.equal(allowed(id('api'), 'shop/db-1:9187'), true);
    assert.equal(allowed('10.1.0.9', 'shop/db-2:9187'), true);
    assert.equal(allowed(id('web'), 'shop/api-1:8080'), true);
    assert.equal(allowed(id('web'), 'shop/db-1:9187'), false, 'web was never seen on 9187');
    assert.equal(allowed('10.1.0.9', 'shop/db-1:5432'), false, 'the scraper was never seen on 5432');
    assert.equal(allowed(id('api'), 'shop/api-1:8080'), false, 'api was never seen calling itself');
    assert.equal(allowed(id('web'), 'shop/db-1:22'), false);
  });

  it('proposes AUDIT on request, and nothing where a selector cannot be made exact', () => {
    const seen: Observed[] = [{ namespace: 'shop', workload: 'db-1', port: 5432, source: { principal: id('web') } }];
    assert.deepEqual(suggestPolicies(seen, snapshot, { audit: true }).policies.map((p) => [p.name, p.spec.action]), [['audit-db-observed', 'AUDIT']]);

    // api-1 labelled like the db pods: {app: db} alone would select it too.
    const clash = parseWorkloadsFile(WORKLOADS.replace('labels: { app: api, tier: back }', 'labels: { app: db, tier: back }'));
    const r = suggestPolicies([...seen, { namespace: 'shop', workload: 'gone-1', port: 80, source: { principal: id('web') } }], clash);
    assert.deepEqual(r.policies, []);
    assert.deepEqual(r.notes, ['shop/gone-1: not in the mesh now; its connections are left out', 'shop/db: its pods\' labels also select api-1; no policy proposed']);
    const bare = parseWorkloadsFile(WORKLOADS.replace(/, labels: \{ app: db, tier: back, pod-template-hash: \w+ \}/g, ''));
    assert.deepEqual(suggestPolicies(seen, bare).notes, ['shop/db: its pods share no label to select them by; no policy proposed']);
  });

  it('writes MeshPolicy objects, or a workloads file\'s policies the file source accepts', () => {
    const seen: Observed[] = [{ namespace: 'shop', workload: 'db-1', port: 5432, source: { principal: id('web') } }];
    const { policies } = suggestPolicies(seen, snapshot);
    const crd = parse(formatSuggestions(policies, 'crd', stringify));
    assert.deepEqual([crd.apiVersion, crd.kind, crd.metadata], ['meshlet.dev/v1alpha1', 'MeshPolicy', { name: 'allow-db-observed', namespace: 'shop' }]);
    const file = parse(formatSuggestions(policies, 'workloads', stringify));
    const withPolicies = parseWorkloadsFile(`${WORKLOADS}${stringify({ policies: file.policies })}`);
    assert.equal(withPolicies.policies.length, 1);
    assert.deepEqual(withPolicies.policies[0]!.problems ?? [], []);
  });

  it('runs as `meshlet policy suggest`: policies on stdout, what it saw and left out on stderr', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-suggest-'));
    try {
      await writeFile(join(dir, 'w.yaml'), WORKLOADS);
      await writeFile(join(dir, 'access.log'), `${line({ src: { ip: '10.1.0.1', principal: id('web') }, dst: { addr: '10.1.0.3:5432', workload: 'shop/db-1', namespace: 'shop' } })}\nnot json\n`);
      const cli = (...args: string[]) => spawnSync(process.execPath, [join(import.meta.dirname, '../../src/cli.ts'), 'policy', 'suggest', ...args], { encoding: 'utf8' });
      const r = cli('--access-log', join(dir, 'access.log'), '--workloads', join(dir, 'w.yaml'), '--audit');
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(parse(r.stdout).spec, { selector: { matchLabels: { app: 'db', tier: 'back' } }, action: 'AUDIT', rules: [{ from: [{ principals: [id('web')] }], to: [{ ports: [5432] }] }] });
      assert.match(r.stderr, /1 connection\(s\) seen, 1 policy proposed, 1 line\(s\) not understood/);
      const missing = cli('--access-log', join(dir, 'nope.log'), '--workloads', join(dir, 'w.yaml'));
      assert.equal(missing.status, 2);
      assert.match(missing.stderr, /--access-log: cannot read .*nope\.log/);
      const none = cli('--workloads', join(dir, 'w.yaml'), '--output', 'json');
      assert.equal(none.status, 2);
      assert.match(none.stderr, /--access-log FILE is required/);
      assert.match(none.stderr, /--output/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
