// kubelet's readiness probes during an upgrade reach the new agent, not the old one. Both agents
// listen on the readiness port with SO_REUSEPORT, so before src/admin/succession.ts the kernel sent
// about half of the new pod's probes to the old, ready agent: with the CA down, a new agent that
// could get no certificate was reported ready, and the DaemonSet would have stopped the old agent,
// leaving the node's pods refused. Here the CA is down while a new agent starts: no probe may say
// ready until it is. The probes go to the node's readiness port as kubelet's do.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MeshLab } from '../../src/demo/lab.ts';
import { PORTS } from '../../src/ports.ts';
import { eventually } from '../support/wait.ts';

const PROBES = 20;

describe('readiness during an upgrade', () => {
  let lab: MeshLab;
  before(async () => {
    lab = await MeshLab.create({ identity: 'service', nodes: [{ name: 'node-a', pods: [{ name: 'web' }] }] });
    try {
      await lab.startMesh();
    } catch (err) {
      await lab.destroy();
      throw err;
    }
  });
  after(async () => { await lab?.destroy(); });

  const probe = async () => {
    const r = await lab.agentHttp(lab.node('node-a'), '/healthz/ready', { port: PORTS.readiness });
    return { ready: r.ok, body: r.body };
  };
  const probes = async () => { const out = []; for (let i = 0; i < PROBES; i++) out.push(await probe()); return out; };

  it('answers for the new agent only, from its start until it exits', async () => {
    const node = lab.node('node-a');
    const old = lab.agents.get('node-a')!;
    assert.equal((await probe()).ready, true);

    // The CA is down: the new agent cannot get web's certificate and must not be reported ready.
    await lab.stopCa();
    const next = await lab.startAgent(node);
    await eventually('the new agent answers a probe', async () => !(await probe()).ready, 20_000, 100);
    const during = await probes();
    assert.deepEqual(during.filter((p) => p.ready), [], `probes answered ready by the old agent: ${during.filter((p) => p.ready).length} of ${PROBES}`);
    assert.ok(during.every((p) => JSON.parse(p.body).pending.includes('certificates')), during[0]!.body);

    // The new agent dies before it is ready: the old one answers again, ready.
    next.child.kill('SIGKILL');
    await next.exited;
    await eventually('the old agent answers again', async () => (await probe()).ready, 10_000, 100);
    assert.deepEqual((await probes()).filter((p) => !p.ready), [], 'the old agent is alone again and ready');

    // The CA is back: the next new agent becomes ready, the old one drains, and the new one answers alone.
    await lab.startCa();
    const third = await lab.startAgent(node);
    const logged = async (msg: string) => (await lab.processLog(third)).some((l) => l.msg === msg);
    await eventually('the new agent ready', () => logged('agent ready'), 20_000, 100);
    assert.ok(await logged('another agent runs on this node: readiness is answered here from now on'), 'joined the older agent');
    assert.deepEqual((await probes()).filter((p) => !p.ready), [], 'the new agent answers, ready');
    old.child.kill('SIGTERM');
    assert.equal(await old.exited, 0);
    await eventually('the new agent holds the succession socket', () => logged('the older agent on this node is gone: holding the succession socket'), 10_000, 100);
    assert.deepEqual((await probes()).filter((p) => !p.ready), []);
  });
});
