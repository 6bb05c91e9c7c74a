import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runCaptureTool, runCaptureToolsThroughShell } from '../../src/capture/install.ts';

describe('capture tools in the agent', () => {
  it('run the probe gate\'s writes in a shell of their own, never behind a slow capture check', async () => {
    const stop = runCaptureToolsThroughShell();
    try {
      const started = performance.now();
      let slowDone = 0;
      const slow = runCaptureTool('sleep', ['1']).then(() => { slowDone = performance.now() - started; });
      const queued = runCaptureTool('true', []);
      await runCaptureTool('true', [], undefined, 'gate');
      const gateDone = performance.now() - started;
      assert.ok(gateDone < 800, `the gate's command took ${gateDone} ms`);
      await Promise.all([slow, queued]);
      assert.ok(slowDone >= 900, 'the slow command ran meanwhile');
      // The same lane keeps its order: the command queued behind the slow one waited for it.
      assert.ok(performance.now() - started >= 1000);
    } finally {
      stop();
    }
  });
});
