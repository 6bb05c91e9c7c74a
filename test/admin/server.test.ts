import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../src/cli.ts', import.meta.url));

/** Whether loading `module` (and everything it imports) loads Node's bundled undici. */
function loadsBundledUndici(module: string): Promise<boolean> {
  const code = `await import(${JSON.stringify(module)}); process.stdout.write(String(process.moduleLoadList.some((m) => m.includes('deps/undici'))));`;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', code], { timeout: 20_000 }, (err, out) => (err ? reject(err) : resolve(out === 'true')));
  });
}

describe('admin servers', () => {
  it('leave Node\'s bundled undici unloaded: the agent\'s modules never import node:http as ESM', async () => {
    // The check itself must be able to fail: an ESM import of node:http loads it.
    assert.equal(await loadsBundledUndici('node:http'), true);
    assert.equal(await loadsBundledUndici(CLI), false);
  });
});
