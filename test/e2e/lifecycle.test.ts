// Lifecycle end to end: capture is in place before an agent listens (refused, never plaintext), a
// SIGTERM drains (open connections finish, tunnel peers get GOAWAY, exit 0), an upgrade under load
// (a new agent beside the old one on the same ports, then the old one drains) loses no request, and
// a SIGKILLed agent fails closed and its pods fail kubelet's probes (the probe gate) until it returns.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MeshLab, PEER } from '../../src/demo/lab.ts';
import type { AgentProcess } from '../../src/demo/lab-spec.ts';
import { parseMetrics, sum } from '../support/prometheus.ts';
import { eventually } from '../support/wait.ts';

const PORT = 8080;
const HTTP_PORT = 8081;
const APP_ONLY_PORT = 9090;
const LOAD = join(import.meta.dirname, '../../bench/load.ts');
const PROBER = join(import.meta.dirname, '../support/prober.ts');
const MARKER = 'lifecycle-plaintext-marker ';

describe('agent lifecycle in network namespaces', { concurrency: false }, () => {
  let lab: MeshLab;

  before(async () => {
    lab = await MeshLab.create({
      nodes: [
        { name: 'node-a', pods: [{ name: 'web', namespace: 'shop' }, { name: 'outsider', namespace: 'legacy', captured: false }] },
        { name: 'node-b', pods: [{ name: 'db', namespace: 'shop' }, { name: 'bystander', namespace: 'legacy', captured: false }] },
      ],
    });
    try {
      for (const node of lab.meshNodes) {
        await lab.initCapture(node);
        // meshlet init turns on tcp_migrate_req: connections queued on a closing listener move to its
        // SO_REUSEPORT sibling instead of being reset, part of what makes an upgrade lose nothing.
        assert.equal((await lab.topo.exec(node.ns, 'cat', ['/proc/sys/net/ipv4/tcp_migrate_req'])).stdout.trim(), '1');
      }
      await lab.startServer('db', PORT);
      await lab.startHttpServer('db', HTTP_PORT);
      await lab.startServer('bystander', PORT);
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  const peer = async (pod: string, args: string[]) => {
    const r = await lab.topo.exec(lab.pod(pod).ns, process.execPath, [PEER, ...args]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const reach = async (from: string, to: string, pattern?: string) =>
    lab.client(from, { host: lab.pod(to).ip, port: PORT, bytes: 64 * 1024, timeoutMs: 5_000, ...(pattern ? { pattern } : {}) });
  /** Both connections (meshed and plaintext) into db are refused at once, and the marker never crosses `node`'s link. */
  async function refusedWithoutPlaintext(node: string): Promise<void> {
    const capture = await lab.startPacketCapture(lab.node(node));
    let meshed, plain;
    try {
      meshed = await reach('web', 'db', MARKER);
      plain = await reach('outsider', 'db', MARKER);
    } finally {
      const segments = await capture.stop();
      assert.equal(segments.filter((s) => s.payload.includes(MARKER.trim())).length, 0, `payload crossed ${node}'s link in the clear`);
    }
    assert.equal(meshed.ok, false);
    assert.notEqual(meshed.results[0]!.error, 'timeout', 'refused at once, not left hanging');
    assert.equal(plain.ok, false, 'plaintext into a captured pod is refused too, not delivered around the agent');
  }
  const logOf = async (a: AgentProcess, msg: string) => (await lab.processLog(a)).some((l) => l.msg === msg);
  const startAgent = async (node: string, args: string[] = []) => {
    const a = await lab.startAgent(lab.node(node), ['--drain', '30s', ...args]);
    await eventually(`agent ${a.child.pid} on ${node} ready`, () => logOf(a, 'agent ready'), 20_000, 100);
    return a;
  };

  /** Until `node`'s agent relays a connection: one started a moment ago may not have reached it yet. */
  const relaying = (node: string) => eventually(`a connection open through ${node}`,
    async () => sum(parseMetrics(await lab.metrics(lab.node(node))), 'meshlet_connections_open') >= 1, 10_000);

  it('refuses captured pods\' connections, never plaintext, while no agent listens, and serves them once one is ready', async () => {
    // A node whose agent ran (its pods are in the captured set, which lives in the kernel) and is
    // gone: between agents, or while a new one starts.
    for (const node of lab.meshNodes) await startAgent(node.name);
    assert.equal((await reach('web', 'db')).ok, true);
    for (const node of lab.meshNodes) assert.equal(await lab.stopAgent(node.name), 0);
    assert.ok((await lab.ipsetMembers(lab.node('node-a'))).has(lab.pod('web').ip), 'the captured set outlives the agent');
    await refusedWithoutPlaintext('node-a');
    for (const node of lab.meshNodes) await startAgent(node.name);
    assert.equal((await reach('web', 'db')).ok, true);
  });

  it('drains on SIGTERM: open connections finish, peers get GOAWAY, new ones are refused, exit 0', async () => {
    const old = lab.agents.get('node-b')!;
    const chat = peer('web', ['chat', '--host', lab.pod('db').ip, '--port', String(PORT), '--duration', '3000', '--interval', '100']);
    await relaying('node-b');
    const termAt = Date.now();
    old.child.kill('SIGTERM');
    await eventually('node-a told to go away', async () => (await lab.agentLog('node-a')).some((l) => l.msg === 'tunnel peer sent GOAWAY: new connections open a new session'), 5_000);
    assert.equal((await reach('web', 'db')).ok, false, 'no agent accepts on node-b while it drains');
    const c = await chat;
    assert.equal(c.ok, true, `the open connection was cut: ${JSON.stringify(c)}`);
    assert.ok(c.rounds >= 20, `${c.rounds} rounds`);
    assert.equal(await old.exited, 0);
    assert.ok(Date.now() - termAt < 15_000, 'exits once its connections ended, not at the end of the 30 s drain');
    await startAgent('node-b');
  });

  it('stops at once on a second SIGTERM during the drain, and exits 0', async () => {
    const old = lab.agents.get('node-b')!;
    // A connection that would keep the 30 s drain busy for 20 s.
    const chat = peer('web', ['chat', '--host', lab.pod('db').ip, '--port', String(PORT), '--duration', '20000', '--interval', '100']);
    await relaying('node-b'); // an agent with nothing open would end its drain at once
    old.child.kill('SIGTERM');
    await eventually('node-b draining', async () => (await lab.processLog(old)).some((l) => l.msg === 'draining'), 5_000);
    assert.equal(old.child.exitCode, null, 'the first SIGTERM drains: the agent is still there');
    const secondAt = Date.now();
    old.child.kill('SIGTERM');
    assert.equal(await old.exited, 0);
    const tookMs = Date.now() - secondAt;
    assert.ok(tookMs < 10_000, `exited ${tookMs} ms after the second SIGTERM, not at the end of the drain`);
    assert.ok((await lab.processLog(old)).some((l) => l.msg === 'second signal: stopping now, without the drain'));
    const c = await chat;
    assert.equal(c.ok, false, 'the open connection was cut, as a second signal asks');
    await startAgent('node-b');
  });

  /**
   * Upgrades node-b's agent, then node-a's, while fixed-rate HTTP on keep-alive connections, short
   * connections every 50 ms and one long connection run from web to db. `busy`: as many busy loops
   * as there are cores run the whole time, as on a loaded node (issue 22 part 5).
   */
  async function upgradeUnderLoad(busy: boolean): Promise<void> {
    const db = lab.pod('db').ip;
    const SECONDS = 9;
    const loops = busy ? Array.from({ length: availableParallelism() }, () => spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' })) : [];
    try {
      const latency = lab.topo.exec(lab.pod('web').ns, process.execPath, [LOAD, 'latency', '--url', `http://${db}:${HTTP_PORT}/`, '--rate', '200', '--seconds', String(SECONDS), '--connections', '4']);
      const dial = peer('web', ['dial', '--host', db, '--port', String(PORT), '--duration', String(SECONDS * 1000), '--interval', '50']);
      const chat = peer('web', ['chat', '--host', db, '--port', String(PORT), '--duration', String(SECONDS * 1000), '--interval', '100']);
      const upgraded: Array<Promise<number | null>> = [];
      const olds: AgentProcess[] = [];
      // The destination side first, then the source side, each while traffic flows.
      for (const node of ['node-b', 'node-a']) {
        await new Promise((r) => setTimeout(r, 1500));
        const old = lab.agents.get(node)!;
        olds.push(old);
        await startAgent(node);
        old.child.kill('SIGTERM');
        upgraded.push(old.exited);
      }
      const lat = await latency;
      assert.equal(lat.code, 0, lat.stderr);
      const l = JSON.parse(lat.stdout.trim().split('\n').at(-1)!);
      const [d, c] = [await dial, await chat];
      // On failure, say what the agents (old and new) refused and why.
      const refusals = d.failures.length === 0 && l.errors === 0 ? [] : (await Promise.all([...olds, ...lab.agents.values()].map((a) => lab.processLog(a))))
        .flat().filter((x) => x.scope === 'access' && x.outcome === 'error').map((x) => `${x.node} ${x.error}: ${x.reason}`);
      assert.equal(l.errors, 0, `HTTP requests failed: ${JSON.stringify(l)}; agents refused: ${refusals.join('; ')}`);
      // Busy cores slow the load generator itself: fewer requests, but none may fail.
      assert.ok(l.requests >= SECONDS * 200 * (busy ? 0.3 : 0.9), `${l.requests} requests`);
      assert.equal(d.failures.length, 0, `short connections failed: ${JSON.stringify(d.failures)}; agents refused: ${refusals.join('; ')}`);
      assert.ok(d.attempts > (busy ? 30 : 100), `${d.attempts} short connections`);
      assert.equal(c.ok, true, JSON.stringify(c));
      assert.deepEqual(await Promise.all(upgraded), [0, 0], 'both old agents drained and exited 0');
    } finally {
      for (const loop of loops) loop.kill('SIGKILL');
    }
  }

  it('upgrades both agents under load without losing a request', () => upgradeUnderLoad(false));

  it('upgrades both agents under load without losing a request while busy loops hold every core', () => upgradeUnderLoad(true));

  /** kubelet's stand-in on `node`: tcpSocket probes every second, not ready after 3 failures. */
  function startProber(node: string, targets: Record<string, string>) {
    const events: Array<{ target: string; ready: boolean; at: number; lastError?: string }> = [];
    const child = lab.topo.spawn(lab.node(node).ns, process.execPath, [
      PROBER, ...Object.entries(targets).flatMap(([name, addr]) => ['--target', `${name}=${addr}`]),
      '--period-ms', '1000', '--timeout-ms', '1000', '--failure-threshold', '3', '--success-threshold', '1',
    ]);
    let buffered = '';
    child.stdout?.on('data', (d: Buffer) => {
      buffered += String(d);
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) { const e = JSON.parse(line); if ('target' in e) events.push(e); }
    });
    const readyNow = (target: string) => events.filter((e) => e.target === target).at(-1)?.ready === true;
    const change = (target: string, ready: boolean, after: number) => events.find((e) => e.target === target && e.ready === ready && e.at >= after);
    return { events, child, readyNow, change };
  }

  it('fails closed when an agent is SIGKILLed: refused, never plaintext, its pods fail their probes within 10 s, and all recover when it returns', async () => {
    const db = lab.pod('db').ip;
    const appOnly = await lab.startServer('db', APP_ONLY_PORT);
    const prober = startProber('node-b', { db: `${db}:${PORT}`, 'db-app-only': `${db}:${APP_ONLY_PORT}`, bystander: `${lab.pod('bystander').ip}:${PORT}` });
    try {
      await eventually('every pod ready', () => ['db', 'db-app-only', 'bystander'].every(prober.readyNow), 10_000, 100);
      // While the agent lives, probes reach the application itself (the gate only opens the way):
      // an application that stops listening fails its probe although the agent is fine.
      const stoppedAt = Date.now();
      appOnly.kill('SIGKILL');
      await eventually('db-app-only not ready', () => prober.change('db-app-only', false, stoppedAt) !== undefined, 10_000, 100);

      const victim = lab.agents.get('node-b')!;
      const killedAt = Date.now();
      victim.child.kill('SIGKILL');
      await victim.exited;
      await refusedWithoutPlaintext('node-b');
      const flip = await eventually('db reported not ready', () => prober.change('db', false, killedAt), 15_000, 100);
      const flipMs = flip.at - killedAt;
      assert.ok(flipMs < 10_000, `db reported not ready ${flipMs} ms after the agent died`);
      assert.equal(flip.lastError, 'ECONNREFUSED', 'the gate resets the probe at once, no timeout');

      const restartedAt = Date.now();
      await startAgent('node-b');
      const back = await eventually('db ready again', () => prober.change('db', true, restartedAt), 10_000, 100);
      assert.equal((await reach('web', 'db')).ok, true);
      assert.equal((await reach('outsider', 'db')).ok, true);
      // A pod outside the mesh on the same node never noticed.
      assert.deepEqual(prober.events.filter((e) => e.target === 'bystander').map((e) => e.ready), [true]);
      const gate = (await lab.configDump(lab.node('node-b'))).probeGate;
      assert.equal(gate.vouched, 1);
      assert.equal(gate.failures, 0);
      process.stdout.write(`# probe gate: not ready ${flipMs} ms after SIGKILL, ready ${back.at - restartedAt} ms after the restart began\n`);
    } finally {
      prober.child.kill('SIGTERM');
    }
  });
});
