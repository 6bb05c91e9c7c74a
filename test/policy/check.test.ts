import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError } from '../../src/errors.ts';
import { checkConnection, formatCheck } from '../../src/policy/check.ts';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';

const FILE = `
trustDomain: cluster.local
nodes: [{ name: node-a, ip: 10.240.0.11 }]
workloads:
  - { name: web, namespace: shop, serviceAccount: web, ip: 10.1.0.10, node: node-a }
  - { name: db, namespace: shop, serviceAccount: db, ip: 10.1.0.20, node: node-a, labels: { app: db } }
  - { name: old, namespace: legacy, serviceAccount: old, ip: 10.1.0.30, node: node-a, captured: false }
namespaces: [{ name: shop, mtls: strict }]
policies:
  - name: db-clients
    namespace: shop
    selector: { matchLabels: { app: db } }
    rules:
      - from: [{ principals: ["spiffe://cluster.local/ns/shop/sa/web"] }]
        to: [{ ports: [5432], methods: [GET] }]
      - from: [{ principals: ["spiffe://cluster.local/ns/shop/sa/web"] }]
        to: [{ ports: [5432] }]
  - { name: watch-db, namespace: shop, action: AUDIT, selector: { matchLabels: { app: db } }, rules: [{}] }
  - { name: suggested-db, namespace: shop, action: AUDIT, selector: { matchLabels: { app: db } }, rules: [{ to: [{ ports: [5432] }] }] }
`;

describe('policy check', () => {
  const snapshot = parseWorkloadsFile(FILE);

  it('explains an allowed connection: the policy, the audit and what cannot be enforced', () => {
    const r = checkConnection(snapshot, 'spiffe://cluster.local/ns/shop/sa/web', 'shop/db:5432');
    assert.deepEqual(r.decision, { allowed: true, policy: 'shop/db-clients', audit: ['shop/watch-db', 'shop/suggested-db'] });
    assert.deepEqual(r.from, { principal: 'spiffe://cluster.local/ns/shop/sa/web', ip: '10.1.0.10', workload: 'shop/web', plaintext: false });
    const text = formatCheck(r);
    assert.match(text, /^ALLOW  spiffe:\/\/cluster.local\/ns\/shop\/sa\/web -> shop\/db:5432 \(10.1.0.20, mTLS strict\)/);
    assert.match(text, /audited by: shop\/watch-db/);
    assert.match(text, /methods cannot be enforced at L4/);
  });

  it('explains a denial, by IP for both ends', () => {
    const r = checkConnection(snapshot, '10.1.0.10', '10.1.0.20:22');
    assert.equal(r.decision.allowed, false);
    assert.equal(r.decision.policy, 'no-allow-matched');
    assert.match(formatCheck(r), /^DENY .*\n {2}decided by: no-allow-matched\n {2}reason: {5}ALLOW policies select shop\/db \(shop\/db-clients\) and none matched/);
    // The AUDIT policy for 5432 only would have denied it too, before anyone enforced it.
    assert.deepEqual(r.decision.auditUnmatched, ['shop/suggested-db']);
    assert.match(formatCheck(r), /AUDIT not matched \(would deny as ALLOW\): shop\/suggested-db/);
  });

  it('treats an IP outside the mesh as plaintext, which STRICT refuses', () => {
    const r = checkConnection(snapshot, '10.1.0.30', 'shop/db:5432');
    assert.equal(r.from.plaintext, true);
    assert.deepEqual(r.decision, { allowed: false, policy: 'mtls-strict', reason: 'plaintext to shop/db is refused in STRICT mode' });
  });

  it('refuses what it cannot check, saying why', () => {
    assert.throws(() => checkConnection(snapshot, 'web', 'shop/db:5432'), (e: unknown) => e instanceof ConfigError && /neither a SPIFFE ID nor an IP/.test(e.message));
    assert.throws(() => checkConnection(snapshot, '10.1.0.10', 'shop/db'), /is not WORKLOAD:PORT/);
    assert.throws(() => checkConnection(snapshot, '10.1.0.10', 'shop/nope:80'), /no workload shop\/nope/);
    // NAME:PORT alone, as the help writes it, when one namespace has the name.
    assert.equal(checkConnection(snapshot, '10.1.0.10', 'db:5432').to.workload, 'shop/db');
    assert.throws(() => checkConnection(snapshot, '10.1.0.10', 'legacy/old:80'), /is not captured/);
  });

  describe('the command', () => {
    let dir: string;
    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'meshlet-check-'));
      await writeFile(join(dir, 'w.yaml'), FILE);
    });
    after(async () => { await rm(dir, { recursive: true, force: true }); });
    const cli = (...args: string[]) => spawnSync(process.execPath, [join(import.meta.dirname, '../../src/cli.ts'), 'policy', 'check', ...args, '--workloads', join(dir, 'w.yaml')], { encoding: 'utf8' });

    it('exits 0 when allowed and 1 when denied, with --json for scripts', () => {
      const ok = cli('--from', 'spiffe://cluster.local/ns/shop/sa/web', '--to', 'shop/db:5432', '--json');
      assert.equal(ok.status, 0, ok.stderr);
      assert.equal(JSON.parse(ok.stdout).decision.policy, 'shop/db-clients');
      const denied = cli('--from', '10.1.0.30', '--to', 'shop/db:5432');
      assert.equal(denied.status, 1, denied.stderr);
      assert.match(denied.stdout, /^DENY {2}plaintext from 10.1.0.30 -> shop\/db:5432/);
      const bad = cli('--from', '10.1.0.30');
      assert.equal(bad.status, 2);
      assert.match(bad.stderr, /--to \(namespace\/name:port or ip:port\) is required/);
    });

    it('exits 4, in one line, when it cannot decide (the workloads cannot be read)', () => {
      const r = spawnSync(process.execPath, [join(import.meta.dirname, '../../src/cli.ts'), 'policy', 'check', '--from', '10.1.0.30', '--to', 'shop/db:5432', '--workloads', join(dir, 'missing.yaml')], { encoding: 'utf8' });
      assert.equal(r.status, 4, r.stderr);
      assert.match(r.stderr, /^meshlet policy check: could not decide: /);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.equal(r.stdout, '');
    });
  });
});
