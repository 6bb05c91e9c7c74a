// The taint gate (src/workloads/taint-gate.ts) against the API stand-in: an agent that becomes ready
// removes the not-ready taint from its own node, and only that.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { NOT_READY_TAINT, TaintGate } from '../../src/workloads/taint-gate.ts';
import { ApiStandIn, nodeObject } from '../support/apiserver.ts';
import { eventually } from '../support/wait.ts';

const log = pino({ level: 'silent' });
const OTHER = { key: 'dedicated', value: 'gpu', effect: 'NoSchedule' };
const GATE = { key: NOT_READY_TAINT, effect: 'NoSchedule' };
const tainted = (name: string, taints: object[]) => ({ ...nodeObject(name), spec: { taints } });

describe('taint gate', () => {
  let api: ApiStandIn;
  const gates: TaintGate[] = [];
  const gate = () => { const g = new TaintGate({ kubeConfig: api.kubeConfig(), log, retryMinMs: 20, retryMaxMs: 50 }); gates.push(g); return g; };
  before(async () => { api = await ApiStandIn.start(); });
  after(async () => { for (const g of gates) g.close(); await api.close(); });

  it('removes its taint from its own node once ready, and leaves the others\' taints and nodes', async () => {
    api.put('nodes', tainted('node-a', [OTHER, GATE]));
    api.put('nodes', tainted('node-b', [GATE]));
    const g = gate();
    g.nodeReady('node-a');
    await eventually('the gate done', () => g.phase === 'done');
    assert.deepEqual((api.get('nodes', undefined, 'node-a') as any).spec.taints, [OTHER]);
    assert.deepEqual((api.get('nodes', undefined, 'node-b') as any).spec.taints, [GATE], 'another node keeps its taint');
    g.nodeReady('node-a');
    assert.equal(api.patches.filter((p) => p.name === 'node-a').length, 1, 'once per agent');
  });

  it('writes nothing to a node that has no taint', async () => {
    api.put('nodes', tainted('node-c', [OTHER]));
    const before = api.patches.length;
    const g = gate();
    g.nodeReady('node-c');
    await eventually('the gate done', () => g.phase === 'done');
    assert.equal(api.patches.length, before);
    assert.deepEqual((api.get('nodes', undefined, 'node-c') as any).spec.taints, [OTHER]);
  });

  it('never removes a taint that moved since it was read, and tries again on a fresh read', async () => {
    api.put('nodes', tainted('node-d', [GATE]));
    // Between the agent's read and its patch, someone puts another taint first: index 0 is no
    // longer the gate's, the patch's test fails, the next attempt reads again.
    let moved = false;
    const original = api.patches.push.bind(api.patches);
    api.patches.push = (...items) => {
      if (!moved && items.some((p) => p.name === 'node-d')) {
        moved = true;
        api.put('nodes', tainted('node-d', [OTHER, GATE]));
      }
      return original(...items);
    };
    const g = gate();
    g.nodeReady('node-d');
    await eventually('the gate done', () => g.phase === 'done');
    api.patches.push = original;
    assert.ok(moved);
    assert.deepEqual((api.get('nodes', undefined, 'node-d') as any).spec.taints, [OTHER], 'the other taint survives, the gate\'s is gone');
    assert.equal(api.patches.filter((p) => p.name === 'node-d').length, 2, 'the first patch failed its test, the second applied');
  });

  it('keeps trying while the API refuses', async () => {
    api.put('nodes', tainted('node-e', [GATE]));
    api.down = true;
    const g = gate();
    g.nodeReady('node-e');
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(g.phase, 'removing');
    api.down = false;
    await eventually('the gate done after the API came back', () => g.phase === 'done');
    assert.deepEqual((api.get('nodes', undefined, 'node-e') as any).spec.taints, []);
  });
});
