import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CaptureTools } from '../../src/capture/tools.ts';

describe('capture tools in the agent', () => {
  it('run the probe gate\'s writes in a shell of their own, never behind a slow capture check', async () => {
    const tools = CaptureTools.throughShells();
    try {
      const started = performance.now();
      const doneAt = (p: Promise<unknown>) => p.then(() => performance.now() - started);
      const slow = doneAt(tools.run('sleep', ['1']));
      const queued = doneAt(tools.run('true', []));
      const gate = await doneAt(tools.run('true', [], undefined, 'gate'));
      assert.ok(gate < 800, `the gate's command took ${gate} ms`);
      assert.ok(await slow >= 900, 'the slow command ran meanwhile');
      // The default lane keeps its order: the command queued behind the slow one waited for it.
      assert.ok(await queued >= await slow, 'queued behind the slow command');
    } finally {
      tools.close();
    }
  });
});
