import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { formatStatus, table } from '../src/status.ts';

describe('meshlet status', () => {
  it('aligns tables and says when one is empty', () => {
    assert.equal(table(['A', 'LONGER'], [['xyz', '1'], ['p', '22']]), '  A    LONGER\n  ---  ------\n  xyz  1\n  p    22\n');
    assert.equal(table(['A'], []), '  (none)\n');
  });

  it('says what a not-ready agent waits for, and what each policy decided', () => {
    const text = formatStatus({
      node: 'n1', ready: false, pending: ['certificates'], trustDomain: 'td', identityProvider: 'local-ca',
      workloadSource: { kind: 'kubernetes', lastError: 'pods: fetch failed' },
      workloads: [
        { name: 'web', namespace: 'shop', ip: '10.0.0.1', ipv6: 'fd00::1', node: 'n1', spiffeId: 'spiffe://td/ns/shop/sa/web', captured: true, local: true },
        { name: 'db', namespace: 'shop', ip: '10.0.0.2', node: 'n1', spiffeId: 'spiffe://td/ns/shop/sa/db', captured: true, local: true },
      ],
      certificates: [{ spiffeId: 'spiffe://td/ns/shop/sa/web', state: 'pending', error: 'ca_unavailable' }],
      policy: { mtls: { shop: 'strict' }, policies: [{ id: 'shop/p', action: 'ALLOW', rules: 1, warnings: ['rules[0].to[0]: paths cannot be enforced at L4'] }],
        decisions: [{ action: 'allow', policy: 'shop/p', count: 7 }] },
      connections: { totals: { open: 0, opened: 9, failed: 2 }, open: [] },
      services: [{ name: 'api', namespace: 'shop', clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80 }], preferClose: false, endpoints: [
        { ip: '10.0.0.7', ready: true, open: 3, consecutiveFailures: 0, ejections: 0 },
        { ip: '10.0.0.8', ready: true, open: 0, consecutiveFailures: 0, ejections: 1, ejectedUntil: '1970-01-01T00:00:10.000Z' },
      ] }],
      probeGate: { ttlSeconds: 4, vouched: 0, failures: 3, lastError: 'ipset: no such set' },
    }, 0);
    assert.match(text, /shop\/api\s+10\.96\.0\.10\s+http:80\s+10\.0\.0\.7 3, 10\.0\.0\.8 \(ejected until 1970-01-01T00:00:10\.000Z\) 0/);
    assert.match(text, /PROBE GATE: 0 pods vouched for, TTL 4s, last refresh never, FAILING: ipset: no such set/);
    assert.match(text, /^node n1: NOT READY \(waiting for certificates\)/);
    assert.match(text, /shop\s+web\s+10\.0\.0\.1\s+fd00::1\s+spiffe:\/\/td\/ns\/shop\/sa\/web/);
    assert.match(text, /shop\s+db\s+10\.0\.0\.2\s+-\s+spiffe:\/\/td\/ns\/shop\/sa\/db/);
    assert.match(text, /workloads from kubernetes \(last error: pods: fetch failed\)/);
    assert.match(text, /spiffe:\/\/td\/ns\/shop\/sa\/web\s+pending\s+-\s+ca_unavailable/);
    assert.match(text, /POLICIES \(mTLS: shop=strict\)/);
    assert.match(text, /shop\/p\s+ALLOW\s+1\s+7\s+0\s+0\s+rules\[0\]\.to\[0\]: paths cannot be enforced at L4/);
    assert.match(text, /CONNECTIONS \(0 open; 9 since start, 2 refused or failed\)\n {2}\(none\)/);
  });

  it('exits 1 with a clear message when no agent answers', () => {
    const r = spawnSync(process.execPath, [join(import.meta.dirname, '../src/cli.ts'), 'status', '--admin', 'http://127.0.0.1:9'], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot read the agent's admin API at http:\/\/127.0.0.1:9: .*\[agent_unreachable\]/);
  });
});
