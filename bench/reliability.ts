// `npm run bench:reliability` (root): the reliability report's numbers, on the demo topology (one
// captured client and server on two nodes):
//
//   upgrades   fixed-rate HTTP (keep-alive) + a short connection every 50 ms + one long connection,
//              while each node's agent is replaced twice (new agent beside the old on the same ports,
//              then SIGTERM to the old); requests and connections lost are counted
//   sigkill    the destination node's agent is SIGKILLed under the same load: connections refused
//              while it is gone (never plaintext), and the time from restart to ready and to the
//              first successful connection
//   probe gate node-b's agent SIGKILLed three times with kubelet's stand-in (test/support/prober.ts,
//              tcpSocket every 1 s, 3 failures) probing the server pod: time from the kill to
//              "not ready", and from the restart to "ready"
//   hostile    every attack of test/support/hostile.ts against the tunnel port while the load runs:
//              the load's latency with and without the barrage
//
// Writes bench/reliability-results.json. Nothing is asserted.
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { MeshLab, PEER } from '../src/demo/lab.ts';
import type { AgentProcess } from '../src/demo/lab-spec.ts';
import { assertNetnsPrerequisites } from '../src/netns/topology.ts';

const HERE = resolve(fileURLToPath(import.meta.url), '..');
const LOAD = join(HERE, 'load.ts');
const HOSTILE = join(HERE, '..', 'test', 'support', 'hostile.ts');
const PROBER = join(HERE, '..', 'test', 'support', 'prober.ts');
const { values: opts } = parseArgs({ options: {
  rate: { type: 'string', default: '300' },
  out: { type: 'string', default: join(HERE, 'reliability-results.json') },
} });
const RATE = Number(opts.rate);
const say = (s: string) => process.stderr.write(`${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

await assertNetnsPrerequisites();
const lab = await MeshLab.create({
  agentArgs: ['--drain', '60s'],
  nodes: [{ name: 'node-a', pods: [{ name: 'client', namespace: 'bench' }] }, { name: 'node-b', pods: [{ name: 'server', namespace: 'bench' }] }],
});
const results: Record<string, unknown> = { date: new Date().toISOString(), node: process.version, rate: RATE };

const inClient = (script: string, args: string[]) => lab.topo.exec(lab.pod('client').ns, process.execPath, [script, ...args]);
/** The standard load for `seconds`; resolves with what it saw. */
async function load(seconds: number) {
  const server = lab.pod('server').ip;
  const [l, d, c] = await Promise.all([
    inClient(LOAD, ['latency', '--url', `http://${server}:8081/`, '--rate', String(RATE), '--seconds', String(seconds), '--connections', '8']),
    inClient(PEER, ['dial', '--host', server, '--port', '8080', '--duration', String(seconds * 1000), '--interval', '50']),
    inClient(PEER, ['chat', '--host', server, '--port', '8080', '--duration', String(seconds * 1000), '--interval', '100']),
  ]);
  const latency = JSON.parse(l.stdout.trim().split('\n').at(-1)!);
  const dial = JSON.parse(d.stdout);
  const chat = JSON.parse(c.stdout);
  return {
    requests: latency.requests, requestErrors: latency.errors, p50: latency.p50, p99: latency.p99, max: latency.max,
    shortConnections: dial.attempts, shortConnectionFailures: dial.failures.length, longConnectionOk: chat.ok, failures: dial.failures.slice(0, 10),
  };
}
async function startAgent(node: string): Promise<{ agent: AgentProcess; readyMs: number }> {
  const t0 = Date.now();
  const agent = await lab.startAgent(lab.node(node));
  for (;;) {
    if ((await lab.processLog(agent)).some((l) => l.msg === 'agent ready')) return { agent, readyMs: Date.now() - t0 };
    if (Date.now() - t0 > 30_000) throw new Error(`agent on ${node} not ready`);
    await sleep(50);
  }
}

try {
  for (const ns of [...lab.meshNodes.map((n) => n.ns), lab.pod('client').ns]) await lab.topo.exec(ns, 'sysctl', ['-q', '-w', 'net.ipv4.tcp_tw_reuse=1']);
  await lab.startMesh();
  await lab.startServer('server', 8080);
  await lab.startHttpServer('server', 8081);

  say('baseline: 20 s of load, nothing happening ...');
  results.baseline = await load(20);

  say('upgrades: 20 s of load, each agent replaced twice ...');
  const upgrades: Array<{ node: string; newReadyMs: number; oldExit: number | null; oldDrainedMs: number }> = [];
  const upgradeLoad = load(20);
  for (const node of ['node-b', 'node-a', 'node-b', 'node-a']) {
    await sleep(3000);
    const old = lab.agents.get(node)!;
    const { readyMs } = await startAgent(node);
    const t = Date.now();
    old.child.kill('SIGTERM');
    const entry = { node, newReadyMs: readyMs, oldExit: null as number | null, oldDrainedMs: 0 };
    void old.exited.then((code) => { entry.oldExit = code; entry.oldDrainedMs = Date.now() - t; });
    upgrades.push(entry);
  }
  results.upgrades = { load: await upgradeLoad, agents: upgrades };

  say('sigkill: node-b\'s agent killed under load, restarted 3 s later ...');
  const killLoad = load(12);
  await sleep(3000);
  const victim = lab.agents.get('node-b')!;
  victim.child.kill('SIGKILL');
  await victim.exited;
  await sleep(3000);
  const restart = Date.now();
  const { readyMs } = await startAgent('node-b');
  let firstOkMs = -1;
  while (firstOkMs < 0 && Date.now() - restart < 30_000) {
    const r = await lab.client('client', { host: lab.pod('server').ip, port: 8080, bytes: 1024, timeoutMs: 2000 });
    if (r.ok) firstOkMs = Date.now() - restart;
  }
  results.sigkill = { load: await killLoad, deadForMs: 3000, restartToReadyMs: readyMs, restartToFirstConnectionMs: firstOkMs };

  say('probe gate: node-b\'s agent SIGKILLed 3 times while kubelet\'s stand-in probes the server pod ...');
  const prober = lab.topo.spawn(lab.node('node-b').ns, process.execPath, [PROBER, '--target', `server=${lab.pod('server').ip}:8080`,
    '--period-ms', '1000', '--timeout-ms', '1000', '--failure-threshold', '3']);
  const changes: Array<{ ready: boolean; at: number }> = [];
  prober.stdout?.on('data', (d: Buffer) => {
    for (const line of String(d).split('\n').filter(Boolean)) { const e = JSON.parse(line); if ('ready' in e) changes.push(e); }
  });
  const changed = async (ready: boolean, after: number) => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const e = changes.find((c) => c.ready === ready && c.at >= after);
      if (e) return e.at - after;
      if (Date.now() > deadline) throw new Error(`prober never saw ready=${ready}`);
      await sleep(50);
    }
  };
  await changed(true, 0);
  const gate: Array<{ killToNotReadyMs: number; restartToReadyMs: number }> = [];
  for (let i = 0; i < 3; i++) {
    const agent = lab.agents.get('node-b')!;
    const killed = Date.now();
    agent.child.kill('SIGKILL');
    await agent.exited;
    const killToNotReadyMs = await changed(false, killed);
    const restarted = Date.now();
    await startAgent('node-b');
    gate.push({ killToNotReadyMs, restartToReadyMs: await changed(true, restarted) });
  }
  prober.kill('SIGTERM');
  results.probeGate = { probe: 'tcpSocket, period 1 s, timeout 1 s, failureThreshold 3', ttl: '4s', kills: gate };

  say('hostile: every attack against node-b\'s tunnel port during 20 s of load ...');
  const hostileLoad = load(20);
  const attacks = ['not-tls', 'wrong-alpn', 'no-client-cert', 'foreign-trust-domain', 'expired-cert', 'slow-handshake', 'malformed-h2',
    'connect-elsewhere', 'connect-agent-port', 'oversized-headers', 'stream-flood-raw', 'connection-flood'];
  const outcomes: Record<string, unknown> = {};
  await sleep(2000);
  for (let round = 0; round < 3; round++) {
    for (const a of attacks) {
      const r = await lab.topo.exec(lab.node('node-a').ns, process.execPath, [HOSTILE, '--attack', a, '--target', lab.pod('server').ip, '--ca-dir', lab.caDir, '--count', a === 'stream-flood-raw' ? '1100' : '300']);
      outcomes[a] = r.stdout.trim() ? JSON.parse(r.stdout) : { error: r.stderr.trim() };
    }
  }
  const pidAfter = lab.agents.get('node-b')!.child.pid;
  results.hostile = { load: await hostileLoad, attacks: outcomes, rounds: 3, agentSurvived: lab.agents.get('node-b')!.child.exitCode === null, pid: pidAfter };
} finally {
  await lab.destroy();
}
writeFileSync(opts.out!, `${JSON.stringify(results, null, 2)}\n`);
for (const [k, v] of Object.entries(results)) if (typeof v === 'object') say(`${k}: ${JSON.stringify((v as any).load ?? v)}`);
say(`written to ${opts.out}`);
