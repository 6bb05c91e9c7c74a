// MeshPolicy status (src/ca/policy-status.ts): the condition judged from a policy as the agents
// compile it, and written through the status subresource of the API stand-in, once per change.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { acceptedCondition, PolicyStatusWriter } from '../../src/ca/policy-status.ts';
import { CLI } from '../../src/demo/lab-spec.ts';
import { ApiStandIn, type Obj } from '../support/apiserver.ts';
import { eventually } from '../support/wait.ts';

const log = pino({ level: 'silent' });
const NOW = new Date('2026-12-04T00:00:00Z');
const policy = (name: string, spec: object, generation = 1): Obj => ({ metadata: { name, namespace: 'shop', generation }, spec });
const ALLOW_WEB = { action: 'ALLOW', selector: { matchLabels: { app: 'db' } }, rules: [{ from: [{ principals: ['spiffe://td/ns/shop/sa/web'] }] }] };
const accepted = (o: Obj | undefined) => (o?.status as any)?.conditions?.find((c: any) => c.type === 'Accepted');

describe('MeshPolicy status', () => {
  it('says a policy is enforced, or why it is rejected and how it then fails closed', () => {
    const ok = acceptedCondition(policy('allow-web', ALLOW_WEB) as never, NOW);
    assert.deepEqual(ok, { type: 'Accepted', status: 'True', reason: 'Enforced', message: '1 rule(s), enforced at L4 by every agent', observedGeneration: 1, lastTransitionTime: NOW.toISOString() });

    const when = acceptedCondition(policy('with-when', { ...ALLOW_WEB, rules: [{ when: [{ key: 'request.headers[x]', values: ['1'] }] }] }) as never, NOW);
    assert.equal(when.status, 'False');
    assert.equal(when.reason, 'CannotBeEnforced');
    assert.match(when.message!, /fails closed \(it allows nothing\): .*spec\.rules\[0\]\.when: conditions are not supported/);

    const cidr = acceptedCondition(policy('bad-cidr', { action: 'DENY', rules: [{ from: [{ ipBlocks: ['999.1.1.1/99'] }] }] }) as never, NOW);
    assert.equal(cidr.status, 'False');
    assert.match(cidr.message!, /every connection to the workloads it selects is denied/);
    assert.match(cidr.message!, /999\.1\.1\.1\/99/);

    // The transition time stays while the status does.
    const later = new Date(NOW.getTime() + 60_000);
    const again = acceptedCondition({ ...policy('allow-web', ALLOW_WEB, 2), status: { conditions: [ok] } } as never, later);
    assert.equal(again.lastTransitionTime, NOW.toISOString());
    assert.equal(again.observedGeneration, 2);
  });
});

describe('MeshPolicy status against the API', () => {
  let api: ApiStandIn;
  const writers: PolicyStatusWriter[] = [];
  const writer = async () => {
    const w = new PolicyStatusWriter({ kubeConfig: api.kubeConfig(), log, retryMinMs: 20 });
    writers.push(w);
    await w.start();
    return w;
  };
  before(async () => { api = await ApiStandIn.start(); });
  after(async () => { for (const w of writers) w.close(); await api.close(); });

  it('writes each policy\'s condition once, follows a change, and a second replica adds no write', async () => {
    api.missing.add('meshpolicies');
    const first = await writer();
    api.missing.delete('meshpolicies');
    api.put('meshpolicies', policy('allow-web', ALLOW_WEB));
    api.put('meshpolicies', policy('with-when', { ...ALLOW_WEB, rules: [{ when: [{ key: 'k', values: ['v'] }] }] }));
    await eventually('both written', () => accepted(api.get('meshpolicies', 'shop', 'allow-web')) && accepted(api.get('meshpolicies', 'shop', 'with-when')), 10_000);
    assert.equal(accepted(api.get('meshpolicies', 'shop', 'allow-web')).status, 'True');
    assert.equal(accepted(api.get('meshpolicies', 'shop', 'with-when')).status, 'False');
    // The spec is left alone: only the status subresource is written.
    assert.deepEqual((api.get('meshpolicies', 'shop', 'allow-web') as any).spec, ALLOW_WEB);
    const statusPatches = () => api.patches.filter((p) => p.resource === 'meshpolicies/status').length;
    await eventually('the writer saw its own writes', () => first.counts.written === 2);

    const second = await writer();
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(second.counts.written, 0, 'the status already holds: nothing to write');
    assert.equal(statusPatches(), 2);

    api.update('meshpolicies', 'shop', 'allow-web', (o) => {
      o.spec = { ...ALLOW_WEB, rules: [{ from: [{ ipBlocks: ['999.1.1.1/99'] }] }] };
      o.metadata.generation = 2;
    });
    await eventually('the change judged', () => accepted(api.get('meshpolicies', 'shop', 'allow-web'))?.observedGeneration === 2, 10_000);
    const c = accepted(api.get('meshpolicies', 'shop', 'allow-web'));
    assert.equal(c.status, 'False');
    assert.match(c.message, /999\.1\.1\.1\/99/);
  });

  it('is written by `meshlet ca serve --kubernetes`', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-policy-status-'));
    const free = net.createServer();
    await new Promise<void>((r) => free.listen(0, '127.0.0.1', r));
    const port = (free.address() as net.AddressInfo).port;
    await new Promise((r) => free.close(r));
    await writeFile(join(dir, 'kubeconfig'), api.kubeConfigYaml());
    const ca = spawn(process.execPath, [CLI, 'ca', 'serve', '--kubernetes', '--kubeconfig', join(dir, 'kubeconfig'), '--listen-address', '127.0.0.1', '--port', String(port), '--metrics', 'off'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    ca.stdout.on('data', (d) => { out += d; });
    ca.stderr.on('data', (d) => { out += d; });
    const exited = new Promise<number | null>((r) => ca.once('exit', (code) => r(code)));
    try {
      // Only the CA writes from here on.
      for (const w of writers) w.close();
      await eventually('the CA listening', () => out.includes('CA listening'), 20_000, 50).catch((err) => { throw new Error(`${err.message}\n${out}`); });
      api.put('meshpolicies', policy('deny-batch', { action: 'DENY', rules: [{ from: [{ namespaces: ['batch'] }] }] }));
      await eventually('the CA wrote the status', () => accepted(api.get('meshpolicies', 'shop', 'deny-batch'))?.status === 'True', 20_000, 100).catch((err) => { throw new Error(`${err.message}\n${out}`); });
      // Its own log says so (the lines come in 100 ms batches).
      await eventually('the CA logged the write', () => /"policy":"shop\/deny-batch".*MeshPolicy status written/.test(out), 5_000, 50);
    } finally {
      ca.kill('SIGTERM');
      assert.equal(await exited, 0, out);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
