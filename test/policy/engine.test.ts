import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { NO_ALLOW_MATCHED, MeshPolicyEngine } from '../../src/policy/engine.ts';
import { patternSet } from '../../src/policy/compile.ts';
import { schemaProblems } from '../../src/policy/schema.ts';
import { readPolicySpec } from '../../src/policy/spec.ts';
import type { MeshPolicyObject, Workload } from '../../src/workloads/model.ts';
import { workloadSpiffeId } from '../../src/workloads/model.ts';

const TD = 'cluster.local';
function workload(name: string, namespace: string, ip: string, labels: Record<string, string> = { app: name }): Workload {
  return { name, namespace, serviceAccount: name, ip, node: 'node-a', captured: true, spiffeId: workloadSpiffeId(TD, namespace, name), labels, workload: name };
}
const W = {
  web: workload('web', 'shop', '10.1.0.10'),
  db: workload('db', 'shop', '10.1.0.20'),
  cache: workload('cache', 'shop', '10.1.0.30', { app: 'cache', tier: 'backend' }),
  api: workload('api', 'blog', '10.2.0.10'),
  ops: workload('ops', 'ops', '10.3.0.10'),
  sys: workload('sys', 'meshlet-system', '10.9.0.10'),
};
type Src = keyof typeof W | { plaintext: string };

function policy(namespace: string, name: string, spec: Record<string, unknown>): MeshPolicyObject {
  return { namespace, name, spec };
}

interface Case {
  name: string;
  policies: MeshPolicyObject[];
  from: Src;
  to: keyof typeof W;
  port?: number;
  /** true, or the deciding policy of an allow ('allowed-by:ns/name'), or the denying policy. */
  want: { allowed: boolean; policy?: string; audit?: string[]; auditUnmatched?: string[] };
}

const allowFrom = (ns: string, name: string, from: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  policy(ns, name, { action: 'ALLOW', rules: [{ from: [from] }], ...extra });
const principal = (w: keyof typeof W) => W[w].spiffeId;

const CASES: Case[] = [
  { name: 'no policies: allowed', policies: [], from: 'web', to: 'db', want: { allowed: true } },
  { name: 'ALLOW by exact principal', policies: [allowFrom('shop', 'p', { principals: [principal('web')] })], from: 'web', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: 'ALLOW selects, principal differs: denied', policies: [allowFrom('shop', 'p', { principals: [principal('web')] })], from: 'api', to: 'db', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'principal written Istio-style, without spiffe://', policies: [allowFrom('shop', 'p', { principals: ['cluster.local/ns/shop/sa/web'] })], from: 'web', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: 'prefix wildcard principal', policies: [allowFrom('shop', 'p', { principals: ['spiffe://cluster.local/ns/shop/*'] })], from: 'cache', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: 'prefix wildcard does not reach another namespace', policies: [allowFrom('shop', 'p', { principals: ['spiffe://cluster.local/ns/shop/*'] })], from: 'api', to: 'db', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'suffix wildcard principal', policies: [allowFrom('shop', 'p', { principals: ['*/sa/api'] })], from: 'api', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: '"*" principal: any authenticated source', policies: [allowFrom('shop', 'p', { principals: ['*'] })], from: 'ops', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: '"*" principal: plaintext is not authenticated', policies: [allowFrom('shop', 'p', { principals: ['*'] })], from: { plaintext: '10.7.0.1' }, to: 'db', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'notPrincipals excludes one identity', policies: [allowFrom('shop', 'p', { notPrincipals: [principal('web')] })], from: 'web', to: 'db', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'notPrincipals lets the others in', policies: [allowFrom('shop', 'p', { notPrincipals: [principal('web')] })], from: 'cache', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: 'namespaces', policies: [allowFrom('shop', 'p', { namespaces: ['blog'] })], from: 'api', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: 'namespaces with a prefix wildcard', policies: [allowFrom('shop', 'p', { namespaces: ['bl*'] })], from: 'api', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: 'notNamespaces', policies: [allowFrom('shop', 'p', { notNamespaces: ['blog'] })], from: 'api', to: 'db', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'ipBlocks contain the source', policies: [allowFrom('shop', 'p', { ipBlocks: ['10.2.0.0/16'] })], from: 'api', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: 'ipBlocks do not contain the source', policies: [allowFrom('shop', 'p', { ipBlocks: ['10.2.0.0/16'] })], from: 'ops', to: 'db', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'ipBlocks match a plaintext source by address', policies: [allowFrom('shop', 'p', { ipBlocks: ['10.7.0.1'] })], from: { plaintext: '10.7.0.1' }, to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: 'notIpBlocks', policies: [policy('shop', 'd', { action: 'DENY', rules: [{ from: [{ notIpBlocks: ['10.0.0.0/8'] }] }] })], from: { plaintext: '192.168.1.5' }, to: 'db', want: { allowed: false, policy: 'shop/d' } },
  { name: 'ports: on the list', policies: [policy('shop', 'p', { rules: [{ to: [{ ports: [5432] }] }] })], from: 'web', to: 'db', port: 5432, want: { allowed: true, policy: 'shop/p' } },
  { name: 'ports: off the list', policies: [policy('shop', 'p', { rules: [{ to: [{ ports: [5432] }] }] })], from: 'web', to: 'db', port: 22, want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'ports written as strings (Istio)', policies: [policy('shop', 'p', { rules: [{ to: [{ ports: ['5432'] }] }] })], from: 'web', to: 'db', port: 5432, want: { allowed: true, policy: 'shop/p' } },
  { name: 'notPorts', policies: [policy('shop', 'd', { action: 'DENY', rules: [{ to: [{ notPorts: [5432] }] }] })], from: 'web', to: 'db', port: 22, want: { allowed: false, policy: 'shop/d' } },
  { name: 'DENY wins over a matching ALLOW', policies: [allowFrom('shop', 'a', { principals: [principal('web')] }), policy('shop', 'd', { action: 'DENY', rules: [{ from: [{ principals: [principal('web')] }] }] })], from: 'web', to: 'db', want: { allowed: false, policy: 'shop/d' } },
  { name: 'DENY that does not match falls through to ALLOW', policies: [allowFrom('shop', 'a', { principals: [principal('web')] }), policy('shop', 'd', { action: 'DENY', rules: [{ from: [{ namespaces: ['blog'] }] }] })], from: 'web', to: 'db', want: { allowed: true, policy: 'shop/a' } },
  { name: 'AUDIT only records', policies: [policy('shop', 'au', { action: 'AUDIT', rules: [{ from: [{ namespaces: ['shop'] }] }] })], from: 'web', to: 'db', want: { allowed: true, audit: ['shop/au'] } },
  { name: 'an AUDIT policy that selects and does not match: what it would deny as ALLOW', policies: [policy('shop', 'au', { action: 'AUDIT', rules: [{ from: [{ namespaces: ['shop'] }] }] })], from: 'api', to: 'db', want: { allowed: true, auditUnmatched: ['shop/au'] } },
  { name: 'matched and unmatched AUDIT policies side by side', policies: [policy('shop', 'au', { action: 'AUDIT', rules: [{ from: [{ namespaces: ['shop'] }] }] }), policy('shop', 'all', { action: 'AUDIT', rules: [{}] })], from: 'api', to: 'db', want: { allowed: true, audit: ['shop/all'], auditUnmatched: ['shop/au'] } },
  { name: 'AUDIT is recorded on a denial too', policies: [policy('shop', 'au', { action: 'AUDIT', rules: [{}] }), policy('shop', 'd', { action: 'DENY', rules: [{}] })], from: 'web', to: 'db', want: { allowed: false, policy: 'shop/d', audit: ['shop/au'] } },
  { name: 'no selector: the whole namespace', policies: [allowFrom('shop', 'p', { principals: [principal('api')] })], from: 'web', to: 'cache', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'a namespace policy stays in its namespace', policies: [allowFrom('shop', 'p', { principals: [principal('api')] })], from: 'web', to: 'api', want: { allowed: true } },
  { name: 'matchLabels selects only matching workloads', policies: [allowFrom('shop', 'p', { principals: [principal('api')] }, { selector: { matchLabels: { app: 'db' } } })], from: 'web', to: 'cache', want: { allowed: true } },
  { name: 'matchLabels needs every label', policies: [allowFrom('shop', 'p', { principals: [principal('api')] }, { selector: { matchLabels: { app: 'cache', tier: 'frontend' } } })], from: 'web', to: 'cache', want: { allowed: true } },
  { name: 'root-namespace policy covers every namespace', policies: [policy('meshlet-system', 'deny-ops', { action: 'DENY', rules: [{ from: [{ namespaces: ['ops'] }] }] })], from: 'ops', to: 'api', want: { allowed: false, policy: 'meshlet-system/deny-ops' } },
  { name: 'root-namespace policy with a selector', policies: [allowFrom('meshlet-system', 'only-web', { principals: [principal('web')] }, { selector: { matchLabels: { app: 'api' } } })], from: 'ops', to: 'api', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'conflict: namespace ALLOW, root DENY', policies: [allowFrom('shop', 'a', { principals: ['*'] }), policy('meshlet-system', 'd', { action: 'DENY', rules: [{ from: [{ principals: [principal('web')] }] }] })], from: 'web', to: 'db', want: { allowed: false, policy: 'meshlet-system/d' } },
  { name: 'two ALLOW policies: either may allow', policies: [allowFrom('shop', 'a1', { principals: [principal('web')] }), allowFrom('shop', 'a2', { namespaces: ['blog'] })], from: 'api', to: 'db', want: { allowed: true, policy: 'shop/a2' } },
  { name: 'ALLOW without rules allows nothing', policies: [policy('shop', 'nothing', {})], from: 'web', to: 'db', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'ALLOW with one empty rule allows everything', policies: [policy('shop', 'all', { rules: [{}] })], from: { plaintext: '10.7.0.1' }, to: 'db', want: { allowed: true, policy: 'shop/all' } },
  { name: 'DENY with one empty rule denies everything', policies: [policy('shop', 'none', { action: 'DENY', rules: [{}] })], from: 'db', to: 'db', want: { allowed: false, policy: 'shop/none' } },
  { name: 'DENY without rules never applies', policies: [policy('shop', 'idle', { action: 'DENY' })], from: 'web', to: 'db', want: { allowed: true } },
  { name: 'from entries are alternatives', policies: [policy('shop', 'p', { rules: [{ from: [{ principals: [principal('web')] }, { namespaces: ['blog'] }] }] })], from: 'api', to: 'db', want: { allowed: true, policy: 'shop/p' } },
  { name: 'fields of one entry must all match', policies: [allowFrom('shop', 'p', { principals: [principal('web')], ipBlocks: ['10.9.0.0/16'] })], from: 'web', to: 'db', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'from and to of one rule must both match', policies: [policy('shop', 'p', { rules: [{ from: [{ principals: [principal('web')] }], to: [{ ports: [5432] }] }] })], from: 'web', to: 'db', port: 8080, want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'DENY notPrincipals "*": plaintext only', policies: [policy('shop', 'mtls-only', { action: 'DENY', rules: [{ from: [{ notPrincipals: ['*'] }] }] })], from: { plaintext: '10.7.0.1' }, to: 'db', want: { allowed: false, policy: 'shop/mtls-only' } },
  { name: 'DENY notPrincipals "*": meshed sources pass', policies: [policy('shop', 'mtls-only', { action: 'DENY', rules: [{ from: [{ notPrincipals: ['*'] }] }] })], from: 'web', to: 'db', want: { allowed: true } },
  { name: 'L7 fields in an ALLOW: that entry matches nothing', policies: [policy('shop', 'http', { rules: [{ to: [{ ports: [8080], paths: ['/public'] }] }] })], from: 'web', to: 'db', port: 8080, want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'L7 fields in a DENY: dropped, the rest applies', policies: [policy('shop', 'no-post', { action: 'DENY', rules: [{ to: [{ ports: [8080], methods: ['POST'] }] }] })], from: 'web', to: 'db', port: 8080, want: { allowed: false, policy: 'shop/no-post' } },
  { name: 'unreadable ALLOW fails closed', policies: [allowFrom('shop', 'broken', { ipBlocks: ['10.0.0.0/99'] })], from: 'web', to: 'db', want: { allowed: false, policy: NO_ALLOW_MATCHED } },
  { name: 'unreadable DENY denies what it selects', policies: [policy('shop', 'broken', { action: 'DENY', rules: 'everything' })], from: 'web', to: 'db', want: { allowed: false, policy: 'shop/broken' } },
];

describe('MeshPolicy evaluation', () => {
  it(`has at least 30 cases (${CASES.length})`, () => assert.ok(CASES.length >= 30));
  for (const c of CASES) {
    it(c.name, () => {
      const engine = new MeshPolicyEngine();
      engine.update({ policies: c.policies, mtls: {} });
      const src = typeof c.from === 'string' ? W[c.from] : undefined;
      const decision = engine.authorize({
        ...(src ? { sourcePrincipal: src.spiffeId, sourceNamespace: src.namespace } : {}),
        sourceIp: src ? src.ip : (c.from as { plaintext: string }).plaintext,
        destination: W[c.to], destinationPort: c.port ?? 8080,
      });
      assert.equal(decision.allowed, c.want.allowed, JSON.stringify(decision));
      assert.equal(decision.policy, c.want.policy, JSON.stringify(decision));
      assert.deepEqual(decision.audit, c.want.audit);
      assert.deepEqual(decision.auditUnmatched, c.want.auditUnmatched);
    });
  }
});

describe('MeshPolicy engine', () => {
  it('reports what it cannot enforce and what it cannot read', () => {
    const engine = new MeshPolicyEngine();
    engine.update({ policies: [
      policy('shop', 'http', { rules: [{ to: [{ paths: ['/x'] }] }] }),
      // As the Kubernetes source hands over a policy the schema refuses: with its problems.
      { ...policy('shop', 'bad', { action: 'PERMIT' }), problems: schemaProblems({ action: 'PERMIT' }, 'spec') },
      // And one that reached the engine unchecked: refused all the same.
      policy('shop', 'unchecked', { action: 'PERMIT' }),
    ], mtls: {} });
    const dump = engine.dump() as any;
    assert.match(dump.policies[0].warnings[0], /paths cannot be enforced at L4; this ALLOW entry matches nothing/);
    assert.match(dump.policies[1].errors[0], /spec\.action: "PERMIT" is not one of ALLOW, DENY, AUDIT/);
    assert.deepEqual(dump.policies[2].errors, ['spec.action: not as the MeshPolicy schema says']);
  });

  it('counts decisions by action and policy', () => {
    const engine = new MeshPolicyEngine();
    engine.update({ policies: [policy('shop', 'd', { action: 'DENY', rules: [{ from: [{ namespaces: ['blog'] }] }] }), policy('shop', 'au', { action: 'AUDIT', rules: [{}] }),
      policy('shop', 'web-only', { action: 'AUDIT', rules: [{ from: [{ principals: [principal('web')] }] }] })], mtls: {} });
    const conn = (from: Workload) => ({ sourcePrincipal: from.spiffeId, sourceNamespace: from.namespace, sourceIp: from.ip, destination: W.db, destinationPort: 80 });
    for (let i = 0; i < 3; i++) engine.authorize(conn(W.api));
    engine.authorize(conn(W.web));
    assert.deepEqual(engine.decisions().sort((a, b) => a.policy.localeCompare(b.policy) || a.action.localeCompare(b.action)), [
      { action: 'audit', policy: 'shop/au', count: 4 },
      { action: 'deny', policy: 'shop/d', count: 3 },
      { action: 'audit', policy: 'shop/web-only', count: 1 },
      { action: 'audit_unmatched', policy: 'shop/web-only', count: 3 },
    ]);
  });

  it('recompiles only when the policies change, and takes mTLS modes from every snapshot', () => {
    const engine = new MeshPolicyEngine();
    const policies = [allowFrom('shop', 'p', { principals: ['*'] })];
    engine.update({ policies, mtls: {} });
    const g = engine.generation;
    engine.update({ policies: [...policies], mtls: { shop: 'strict' } });
    assert.equal(engine.generation, g, 'same spec objects: no recompilation');
    assert.equal(engine.mtlsMode(W.db), 'strict');
    assert.equal(engine.mtlsMode(W.api), 'permissive');
    engine.update({ policies: [allowFrom('shop', 'p', { principals: ['*'] })], mtls: {} });
    assert.equal(engine.generation, g + 1);
    assert.equal(engine.mtlsMode(W.db), 'permissive');
  });

  it('evaluates only the policies that select the destination', () => {
    // 1,000 policies in other namespaces must not be looked at for a connection to shop/db.
    const engine = new MeshPolicyEngine();
    const others = Array.from({ length: 1000 }, (_, i) => policy(`ns-${i}`, 'p', { action: 'DENY', rules: [{}] }));
    engine.update({ policies: [...others, allowFrom('shop', 'p', { principals: [principal('web')] })], mtls: {} });
    const d = engine.authorize({ sourcePrincipal: W.web.spiffeId, sourceNamespace: 'shop', sourceIp: W.web.ip, destination: W.db, destinationPort: 80 });
    assert.deepEqual(d, { allowed: true, policy: 'shop/p' });
  });
});

describe('policy spec and patterns', () => {
  it('matches exact, "*", prefix and suffix patterns; "" matches none', () => {
    const m = patternSet(['a', 'b*', '*c']);
    assert.deepEqual(['a', 'bx', 'xc', 'x', ''].map(m), [true, true, true, false, false]);
    assert.equal(patternSet(['*'])(''), false);
  });

  it('lists every way a spec departs from the CRD\'s schema, with its path', () => {
    const problems = schemaProblems({
      selector: { matchLabels: { app: 3 } }, action: 'allow', extra: 1,
      rules: [{ from: [{ principals: ['a*b'], ipBlocks: ['10.0.0.x/8'] }], to: [{ ports: [0, 'http'] }], when: [] }],
    }, 'spec');
    assert.deepEqual(problems.sort(), [
      'spec.action: "allow" is not one of ALLOW, DENY, AUDIT',
      'spec.rules[0].from[0].ipBlocks[0]: "10.0.0.x/8" is not an IP address or CIDR block',
      'spec.rules[0].from[0].principals[0]: "a*b" may only use * alone, or at the start or the end',
      'spec.rules[0].to[0].ports[0]: 0 must be >= 1',
      'spec.rules[0].to[0].ports[1]: must be a whole number',
      'spec.rules[0]: unknown field "when"',
      'spec.selector.matchLabels.app: must be a string',
      'spec: unknown field "extra"',
    ]);
    assert.deepEqual(schemaProblems({ action: 'DENY', rules: [{ from: [{ namespaces: ['blog'] }], to: [{ ports: [80], paths: ['/x'] }] }] }, 'spec'), []);
  });

  it('reads what the schema cannot check: empty sources, address ranges, conditions', () => {
    const { problems } = readPolicySpec({ rules: [{ from: [{}, { ipBlocks: ['999.1.1.1/99', '10.0.0.0/33', '10.1.0.0/16'] }], when: [] }] });
    assert.deepEqual(problems, [
      'spec.rules[0].when: conditions are not supported; express them with from and to',
      'spec.rules[0].from[0]: an empty from entry would match every source; leave out from instead',
      'spec.rules[0].from[1].ipBlocks: "999.1.1.1/99" is not an IP address or CIDR block',
      'spec.rules[0].from[1].ipBlocks: "10.0.0.0/33" is not an IP address or CIDR block',
    ]);
  });
});
