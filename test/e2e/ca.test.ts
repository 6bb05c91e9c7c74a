// The CA service end to end: `meshlet ca serve` in a namespace of its own, two agents obtaining
// certificates from it with their node tokens, 20-second certificates renewed under traffic, the CA
// going away and coming back, a root rotation under traffic, and an agent that lies about its node.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MeshLab, PEER } from '../../src/demo/lab.ts';
import { eventually } from '../support/wait.ts';

const APP_PORT = 8080;

describe('CA service in network namespaces', { concurrency: false }, () => {
  let lab: MeshLab;
  let dbIp: string;

  before(async () => {
    lab = await MeshLab.create({
      identity: 'service',
      certTtl: '20s',
      bundlePoll: '300ms',
      // A tunnel session ends with the certificates of its handshake (GOAWAY, then a reset after
      // the drain): with 20 s certificates the long-lived connections below outlive their first
      // session's, and the drain is what lets them finish (the reset itself: hostile.test.ts).
      agentArgs: ['--drain', '30s'],
      nodes: [
        { name: 'node-a', pods: [{ name: 'web', namespace: 'shop', serviceAccount: 'web' }] },
        { name: 'node-b', pods: [{ name: 'db', namespace: 'shop', serviceAccount: 'db' }] },
      ],
    });
    try {
      await lab.startMesh();
      await lab.startServer('db', APP_PORT);
      await lab.startServer('web', APP_PORT);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    dbIp = lab.pod('db').ip;
  });
  after(async () => { await lab?.destroy(); });

  const dump = (node: string) => lab.configDump(lab.node(node));
  const certOf = async (node: string, spiffeId: string) => (await dump(node)).certificates.find((c: any) => c.spiffeId === spiffeId);
  const webId = () => `spiffe://${lab.trustDomain}/ns/shop/sa/web`;
  const dbId = () => `spiffe://${lab.trustDomain}/ns/shop/sa/db`;

  /** Runs a peer command in a pod and parses its JSON report. */
  const peer = async (pod: string, args: string[]) => {
    const r = await lab.topo.exec(lab.pod(pod).ns, process.execPath, [PEER, ...args]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const traffic = (durationMs: number) => Promise.all([
    peer('web', ['chat', '--host', dbIp, '--port', String(APP_PORT), '--duration', String(durationMs), '--interval', '200']),
    peer('web', ['dial', '--host', dbIp, '--port', String(APP_PORT), '--duration', String(durationMs), '--interval', '400']),
    peer('db', ['dial', '--host', lab.pod('web').ip, '--port', String(APP_PORT), '--duration', String(durationMs), '--interval', '400']),
  ]);

  it('gives each agent its own node\'s certificates from the CA service, and traffic flows across nodes', async () => {
    const [a, b] = [await dump('node-a'), await dump('node-b')];
    assert.equal(a.identityProvider, 'ca-service');
    assert.deepEqual(a.certificates.map((c: any) => [c.spiffeId, c.state]), [[webId(), 'available']]);
    assert.deepEqual(b.certificates.map((c: any) => [c.spiffeId, c.state]), [[dbId(), 'available']]);
    const issued = (await lab.caLog()).filter((l) => l.msg === 'certificate issued');
    assert.ok(issued.some((l) => l.node === 'node-a' && l.spiffeId === webId()));
    assert.ok(issued.some((l) => l.node === 'node-b' && l.spiffeId === dbId()));
    assert.ok(!issued.some((l) => l.node === 'node-a' && l.spiffeId === dbId()));

    const there = await lab.client('web', { host: dbIp, port: APP_PORT, bytes: 1_000_000 });
    const back = await lab.client('db', { host: lab.pod('web').ip, port: APP_PORT, bytes: 1_000_000 });
    assert.ok(there.ok && back.ok, JSON.stringify([there, back]));
    await waitFor(async () => (await lab.accessLog('node-b')).some((l) => l.route === 'inbound' && l.outcome === 'ok' && l.src?.principal === webId()), 5_000);
  });

  it('refuses an agent that asks for a workload of another node', async () => {
    // A compromised node-a: its agent claims to be node-b but can only present node-a's token. It
    // runs beside the real agent on other ports and another set, so it cannot disturb node-a's capture.
    const real = lab.agents.get('node-a')!;
    const liar = await lab.startAgent(lab.node('node-a'), [
      '--node', 'node-b', // the lab passes node-a's token file
      '--ipset', 'meshlet-liar', '--outbound-port', '25001', '--inbound-port', '25006', '--tunnel-port', '25008',
      '--admin-port', '25000', '--readiness-port', '25021', '--metrics-port', '25020',
    ]);
    lab.agents.set('node-a', real); // the real agent stays the lab's node-a agent
    try {
      const refusedInCa = async () => (await lab.caLog()).some((l) => l.msg === 'CA request refused' && l.err === 'identity_not_allowed' && l.node === 'node-a' && l.spiffeId === dbId());
      await waitFor(refusedInCa, 20_000);
      const r = await lab.topo.exec(lab.node('node-a').ns, process.execPath, [PEER, 'get', '--url', 'http://127.0.0.1:25000/config_dump']);
      const cert = JSON.parse(r.stdout).certificates.find((c: any) => c.spiffeId === dbId());
      assert.equal(cert.state, 'pending');
      assert.match(cert.lastError, /403 identity_not_allowed/);
      const issued = (await lab.caLog()).filter((l) => l.msg === 'certificate issued' && l.spiffeId === dbId());
      assert.ok(issued.every((l) => l.node === 'node-b'), 'db\'s identity only ever went to node-b');
      // The liar's log shows the refusal as its own error, and it is still running: no crash.
      assert.ok((await lab.processLog(liar)).some((l) => /certificate issuance failed/.test(JSON.stringify(l))));
      assert.equal(liar.child.exitCode, null);
    } finally {
      liar.child.kill('SIGKILL');
      await liar.exited;
    }
  });

  it('renews 20-second certificates before they expire while a long-lived connection and new ones keep working', async () => {
    const start = { web: await certOf('node-a', webId()), db: await certOf('node-b', dbId()) };
    const seen = { web: new Set([start.web.serial]), db: new Set([start.db.serial]) };
    let expiredSeen = false;
    const watch = (async () => {
      const until = Date.now() + 24_000;
      while (Date.now() < until) {
        for (const [key, node, id] of [['web', 'node-a', webId()], ['db', 'node-b', dbId()]] as const) {
          const c = await certOf(node, id);
          if (c.state !== 'available' || Date.parse(c.notAfter) <= Date.now()) expiredSeen = true;
          seen[key].add(c.serial);
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    })();
    const [chat, dialA, dialB] = await traffic(25_000);
    await watch;
    assert.ok(chat.ok && chat.rounds > 50, `long-lived connection: ${JSON.stringify(chat)}`);
    assert.ok(dialA.ok && dialA.attempts > 40, `new connections web->db: ${JSON.stringify(dialA)}`);
    assert.ok(dialB.ok && dialB.attempts > 40, `new connections db->web: ${JSON.stringify(dialB)}`);
    // 25 s with 20 s certificates renewed at half life: at least two new certificates each.
    assert.ok(seen.web.size >= 3 && seen.db.size >= 3, `serials seen: web ${seen.web.size}, db ${seen.db.size}`);
    assert.equal(expiredSeen, false, 'no certificate was ever expired or missing');
  });

  it('keeps serving without the CA until expiry, then fails closed, and recovers when the CA returns', async () => {
    await lab.stopCa();
    const stoppedAt = Date.now();
    assert.ok((await lab.client('web', { host: dbIp, port: APP_PORT })).ok, 'still-valid certificates serve while the CA is down');
    const expiry = Math.max(Date.parse((await certOf('node-a', webId())).notAfter), Date.parse((await certOf('node-b', dbId())).notAfter));
    assert.ok(expiry - stoppedAt <= 21_000);
    await new Promise((r) => setTimeout(r, Math.max(0, expiry - Date.now() + 1_000)));

    const refused = await lab.topo.exec(lab.pod('web').ns, process.execPath, [PEER, 'client', '--host', dbIp, '--port', String(APP_PORT), '--timeout', '10000']);
    const report = JSON.parse(refused.stdout);
    assert.equal(report.ok, false, 'no certificate, no traffic');
    const failClosed = (await lab.accessLog('node-a')).filter((l) => l.error === 'no_certificate');
    assert.ok(failClosed.length > 0, 'the refusal is logged as no_certificate');
    const a = await dump('node-a');
    assert.equal(a.ready, false, 'an agent with an expired certificate is not ready');

    await lab.startCa();
    await Promise.all(lab.meshNodes.map((n) => lab.waitReady(n, 60_000)));
    const recovered = await lab.client('web', { host: dbIp, port: APP_PORT });
    assert.ok(recovered.ok, JSON.stringify(recovered));
  });

  it('rotates the root under traffic without a single failed connection', async () => {
    const running = traffic(24_000);
    const fingerprint = async (file: string) => new X509Certificate(await readFile(join(lab.caDir, file), 'utf8')).fingerprint256;
    const oldRoot = await fingerprint('ca.crt');
    const bothAgents = async (pred: (d: any) => boolean) => pred(await dump('node-a')) && pred(await dump('node-b'));

    await lab.meshlet(['ca', 'rotate', 'prepare', '--ca-dir', lab.caDir]);
    const newRoot = await fingerprint('next.crt');
    await waitFor(() => bothAgents((d) => d.trustBundle?.roots === 2), 10_000);
    await new Promise((r) => setTimeout(r, 1_000));

    await lab.meshlet(['ca', 'rotate', 'activate', '--ca-dir', lab.caDir]);
    await waitFor(() => bothAgents((d) => d.trustBundle?.signingRoot === newRoot
      && d.certificates.every((c: any) => c.state === 'available' && c.signedBy === newRoot)), 15_000);
    await new Promise((r) => setTimeout(r, 1_000));

    await lab.meshlet(['ca', 'rotate', 'finish', '--ca-dir', lab.caDir]);
    await waitFor(() => bothAgents((d) => d.trustBundle?.roots === 1), 10_000);
    // The sessions opened with old-root certificates (the long-lived connection's, at least) end:
    // GOAWAY now, their streams finish within the drain.
    const retired = async () => (await Promise.all(lab.meshNodes.map((n) => lab.agentLog(n.name))))
      .flat().some((l) => l.msg === 'trust bundle changed: tunnel sessions resting on a removed root retired' && l.retired > 0);
    await waitFor(retired, 5_000);

    const [chat, dialA, dialB] = await running;
    assert.ok(chat.ok, `long-lived connection across the rotation: ${JSON.stringify(chat)}`);
    assert.ok(dialA.ok && dialB.ok, `new connections across the rotation: ${JSON.stringify([dialA, dialB])}`);
    assert.notEqual(oldRoot, newRoot);
    // After the rotation, the old root is trusted nowhere, and traffic still flows.
    const after = await lab.client('web', { host: dbIp, port: APP_PORT });
    assert.ok(after.ok);
  });
});

const waitFor = async (cond: () => Promise<boolean>, timeoutMs: number): Promise<void> => { await eventually('the condition', cond, timeoutMs, 200); };
