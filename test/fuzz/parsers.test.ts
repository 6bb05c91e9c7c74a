// Property-based tests (fast-check) for every parser that reads bytes from outside the agent: the
// tunnel's CONNECT authority, forwarded and traceparent headers, SPIFFE IDs from peer certificates,
// the workloads file, MeshPolicy specs, CSRs and CA request bodies. For arbitrary input each must
// answer with a value or its own typed error, never anything else; well-formed input round-trips.
import assert from 'node:assert/strict';
import { isIP } from 'node:net';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { stringify } from 'yaml';
import { BadCsrError, SpiffeIdError, WorkloadSourceError } from '../../src/errors.ts';
import { parseWorkloadCsr } from '../../src/identity/ca.ts';
import { parseSpiffeUri, parseWorkloadId } from '../../src/identity/spiffe.ts';
import { MeshPolicyEngine } from '../../src/policy/engine.ts';
import { readPolicySpec } from '../../src/policy/spec.ts';
import { formatAuthority, formatForwardedFor, formatTraceparent, parseAuthority, parseForwardedFor, parseTraceparent } from '../../src/proxy/tunnel/h2.ts';
import { parseWorkloadsFile } from '../../src/workloads/file.ts';
import type { Workload } from '../../src/workloads/model.ts';
import { caClient, postCsr, startTestCa, type TestCa, TOKENS } from '../support/ca.ts';

const RUNS = { numRuns: 300 };
/** Strings that look a little like what the parser wants, and plain garbage. */
const near = (...pieces: string[]) => fc.oneof(
  fc.string({ maxLength: 80 }),
  fc.stringMatching(/^[\s\S]{0,80}$/),
  fc.array(fc.constantFrom(...pieces, ':', '[', ']', '.', '"', '=', '-', '0', '9', 'f', ' ', '\u0000', '\n'), { maxLength: 30 }).map((a) => a.join('')),
);

describe('tunnel header parsers', () => {
  it('parseAuthority: garbage gives undefined, never a throw; a result is a real address and port', () => {
    fc.assert(fc.property(near('10.1.2.3', '8080', '[fd00::1]', '65535', '0'), (s) => {
      const r = parseAuthority(s);
      if (r) {
        assert.ok(isIP(r.host), r.host);
        assert.ok(Number.isInteger(r.port) && r.port >= 1 && r.port <= 65535);
      }
    }), RUNS);
  });

  it('parseAuthority round-trips every IPv4 and IPv6 address and port', () => {
    fc.assert(fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), fc.integer({ min: 1, max: 65535 }), (ip, port) => {
      assert.deepEqual(parseAuthority(formatAuthority(ip, port)), { host: ip, port });
    }), RUNS);
  });

  it('parseForwardedFor: only well-formed for= gives an address, and it round-trips', () => {
    fc.assert(fc.property(near('for=', '10.0.0.1', '"[fd00::1]"'), (s) => {
      const ip = parseForwardedFor(s);
      if (ip !== undefined) assert.ok(isIP(ip));
    }), RUNS);
    fc.assert(fc.property(fc.oneof(fc.ipV4(), fc.ipV6()), (ip) => { assert.equal(parseForwardedFor(formatForwardedFor(ip)), ip); }), RUNS);
  });

  it('parseTraceparent: 32 lower-case hex digits or nothing, and it round-trips', () => {
    fc.assert(fc.property(near('00-', 'abcdef0123456789', '-01'), (s) => {
      const id = parseTraceparent(s);
      if (id !== undefined) assert.match(id, /^[0-9a-f]{32}$/);
    }), RUNS);
    const traceId = fc.stringMatching(/^[0-9a-f]{32}$/).filter((s) => !/^0+$/.test(s));
    fc.assert(fc.property(traceId, (id) => { assert.equal(parseTraceparent(formatTraceparent(id)), id); }), RUNS);
  });
});

describe('identities', () => {
  it('SPIFFE ID parsing answers with a value or SpiffeIdError', () => {
    fc.assert(fc.property(near('spiffe://', 'cluster.local', '/ns/', '/sa/', 'web'), (s) => {
      for (const parse of [parseSpiffeUri, parseWorkloadId]) {
        try { parse(s); } catch (err) { assert.ok(err instanceof SpiffeIdError, String(err)); }
      }
    }), RUNS);
  });

  it('CSR parsing refuses anything that is not a valid CSR with BadCsrError', () => {
    const pem = fc.uint8Array({ maxLength: 600 }).map((b) => `-----BEGIN CERTIFICATE REQUEST-----\n${Buffer.from(b).toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`);
    fc.assert(fc.property(fc.oneof(fc.string({ maxLength: 200 }), pem), (s) => {
      assert.throws(() => parseWorkloadCsr(s, 'td.test'), (err: unknown) => err instanceof BadCsrError);
    }), { numRuns: 200 });
  });
});

describe('documents', () => {
  it('the workloads file: a snapshot or WorkloadSourceError, for any text and any YAML structure', () => {
    const text = fc.oneof(fc.string({ maxLength: 300 }), fc.anything({ maxDepth: 4 }).map((v) => { try { return stringify(v); } catch { return ''; } }));
    fc.assert(fc.property(text, (t) => {
      try { parseWorkloadsFile(t); } catch (err) { assert.ok(err instanceof WorkloadSourceError, String(err)); }
    }), RUNS);
  });

  it('the workloads file\'s services: a snapshot whose endpoints all have valid ports, or WorkloadSourceError', () => {
    const base = {
      trustDomain: 'td.test', nodes: [{ name: 'n1', ip: '10.0.0.1' }],
      workloads: [
        { name: 'a', namespace: 'shop', serviceAccount: 'a', ip: '10.1.0.1', node: 'n1', labels: { app: 'api' }, ports: [{ name: 'http', port: 8080 }] },
        { name: 'b', namespace: 'shop', serviceAccount: 'b', ip: '10.1.0.2', node: 'n1', labels: { app: 'api' } },
      ],
    };
    // Mostly well-formed entries (so that some parse), with bad values mixed in, and arbitrary junk.
    const port = fc.oneof(fc.integer({ min: 1, max: 65535 }), fc.integer({ min: -5, max: 70_000 }), fc.constantFrom('http', 'nope', 'HTTP', ''));
    const backends = fc.oneof(
      fc.record({ selector: fc.oneof(fc.constant({ app: 'api' }), fc.anything({ maxDepth: 1 })) }),
      fc.record({ endpoints: fc.array(fc.constantFrom('a', 'b', '192.0.2.7', 'zz'), { maxLength: 3 }) }),
    );
    const service = fc.oneof(
      { weight: 1, arbitrary: fc.anything({ maxDepth: 3 }) },
      { weight: 5, arbitrary: fc.tuple(fc.record({
        name: fc.constantFrom('api', 'x', 'Bad_Name'),
        namespace: fc.constantFrom('shop', 'shop', 'other'),
        clusterIP: fc.constantFrom('10.96.0.1', '10.96.0.2', 'None', '::1', 'x'),
        ports: fc.array(fc.record({ name: fc.constantFrom('http', 'admin'), port, targetPort: port }, { requiredKeys: ['port'] }), { minLength: 1, maxLength: 2 }),
        trafficDistribution: fc.constantFrom('PreferClose', 'Anywhere'),
      }, { requiredKeys: ['name', 'namespace', 'clusterIP', 'ports'] }), backends).map(([svc, b]) => ({ ...svc, ...b })) },
    );
    let withEndpoints = 0;
    fc.assert(fc.property(fc.array(service, { maxLength: 2 }), (services) => {
      let snap;
      try { snap = parseWorkloadsFile(stringify({ ...base, services })); } catch (err) { assert.ok(err instanceof WorkloadSourceError, String(err)); return; }
      for (const svc of snap.services) {
        if (svc.endpoints.length > 0) withEndpoints++;
        for (const e of svc.endpoints) {
          for (const [name, n] of Object.entries(e.ports)) {
            assert.ok(svc.ports.some((p) => p.name === name), name);
            assert.ok(Number.isInteger(n) && n >= 1 && n <= 65535, String(n));
          }
        }
      }
    }), { ...RUNS, numRuns: 1000 });
    assert.ok(withEndpoints > 0, 'the generator never produced a valid service with endpoints');
  });

  it('MeshPolicy specs: never throw; a spec without problems compiles and decides', () => {
    const dst: Workload = { name: 'db', namespace: 'shop', serviceAccount: 'db', ip: '10.0.0.2', node: 'n', captured: true, spiffeId: 'spiffe://td/ns/shop/sa/db', labels: { app: 'db' }, workload: 'db' };
    const patterns = fc.array(fc.oneof(fc.constantFrom('*', 'spiffe://td/*', '*/sa/web', 'td/ns/shop/sa/web', 'shop', '10.0.0.0/8', 'fd00::/8'), fc.string({ maxLength: 20 })), { maxLength: 4 });
    const source = fc.record({ principals: patterns, notPrincipals: patterns, namespaces: patterns, notNamespaces: patterns, ipBlocks: patterns, notIpBlocks: patterns }, { requiredKeys: [] });
    const op = fc.record({ ports: fc.array(fc.oneof(fc.integer({ min: -5, max: 70000 }), fc.string({ maxLength: 5 }))), notPorts: fc.array(fc.integer({ min: 1, max: 65535 })), paths: fc.array(fc.string()) }, { requiredKeys: [] });
    const spec = fc.oneof(
      fc.anything({ maxDepth: 4 }),
      fc.record({ selector: fc.anything({ maxDepth: 2 }), action: fc.constantFrom('ALLOW', 'DENY', 'AUDIT', 'allow', 1), rules: fc.array(fc.record({ from: fc.array(source), to: fc.array(op) }, { requiredKeys: [] }), { maxLength: 3 }) }, { requiredKeys: [] }),
    );
    fc.assert(fc.property(spec, (raw) => {
      const { problems, spec: read } = readPolicySpec(raw);
      assert.ok(Array.isArray(problems));
      const engine = new MeshPolicyEngine();
      engine.update({ policies: [{ namespace: 'shop', name: 'p', spec: raw as Record<string, unknown> }], mtls: {} });
      const d = engine.authorize({ sourcePrincipal: 'spiffe://td/ns/shop/sa/web', sourceNamespace: 'shop', sourceIp: '10.0.0.1', destination: dst, destinationPort: 8080 });
      assert.equal(typeof d.allowed, 'boolean');
      // Fail closed: an unreadable ALLOW never allows, an unreadable DENY always denies (an
      // unreadable AUDIT only fails to record).
      if (problems.length > 0 && read.action !== 'AUDIT') assert.equal(d.allowed, false);
    }), RUNS);
  });
});

describe('CA requests over HTTPS', () => {
  let ca: TestCa;
  before(async () => { ca = await startTestCa(); });
  after(async () => { await ca?.close(); });

  it('answers any body with a typed 4xx refusal and stays up', async () => {
    const client = caClient(ca.rootPem);
    await fc.assert(fc.asyncProperty(
      fc.oneof(fc.string({ maxLength: 300 }), fc.anything({ maxDepth: 3 }).map((v) => JSON.stringify(v) ?? ''), fc.record({ csr: fc.string({ maxLength: 200 }) }).map((v) => JSON.stringify(v))),
      async (body) => {
        const r = await postCsr(ca.url, client, { token: TOKENS['node-a'], body });
        assert.ok(r.status === 400, `status ${r.status} for ${JSON.stringify(body).slice(0, 80)}`);
        assert.ok(['bad_request', 'bad_csr'].includes(r.body.error?.code), JSON.stringify(r.body));
      },
    ), { numRuns: 100 });
    // Still serving: the health endpoint answers.
    const health = await postCsr(ca.url, client, { method: 'GET', path: '/healthz/ready' });
    assert.equal(health.status, 200);
  });
});
