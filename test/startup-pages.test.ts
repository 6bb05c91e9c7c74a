import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Logger } from 'pino';
import { readOnlyMappings, type Release, releaseStartupPagesOnce } from '../src/startup-pages.ts';

const MODULE = join(import.meta.dirname, '..', 'src', 'startup-pages.ts');

describe('start-up pages', () => {
  it('finds the binary\'s read-only mappings (code and constants), not its data or other files', () => {
    const maps = [
      '00400000-0074a000 r--p 00000000 fd:01 1234                               /opt/node/bin/node',
      '0074a000-03044000 r-xp 0034a000 fd:01 1234                               /opt/node/bin/node',
      '06b56000-06b7d000 rw-p 06755000 fd:01 1234                               /opt/node/bin/node',
      '7f00a0000000-7f00a0021000 r-xp 00000000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6',
      '7f00b0000000-7f00b0100000 rw-p 00000000 00:00 0 ',
      '7f00c0000000-7f00c0001000 r--p 00000000 fd:01 77                         /opt/node/bin/node (deleted)',
    ].join('\n');
    assert.deepEqual(readOnlyMappings(maps, '/opt/node/bin/node'), [
      { start: 0x400000, end: 0x74a000, perms: 'r--p' },
      { start: 0x74a000, end: 0x3044000, perms: 'r-xp' },
    ]);
  });

  it('is scheduled once per process, and not at all when turned off', async () => {
    const said: string[] = [];
    const log = { info: (_o: unknown, msg: string) => { said.push(msg); } } as unknown as Logger;
    releaseStartupPagesOnce(false, log, 0);
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(said, [], 'turned off, yet scheduled');
    releaseStartupPagesOnce(true, log, 0);
    releaseStartupPagesOnce(true, log, 0);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(said.length, 1, said.join('; '));
    assert.match(said[0]!, /start-up pages/);
  });

  it('gives back what start-up touched of a binary no other process maps', () => {
    // A copy of Node of its own, as an agent alone in its container maps its image's: the pages of
    // the suite's own binary are mapped by the test runner too, and the kernel leaves those alone.
    const dir = mkdtempSync(join(tmpdir(), 'meshlet-pages-'));
    try {
      const node = join(dir, 'node');
      copyFileSync(process.execPath, node);
      const script = `const { releaseStartupPages } = await import(${JSON.stringify(MODULE)}); console.log(JSON.stringify(releaseStartupPages()));`;
      const r = JSON.parse(execFileSync(node, ['--input-type=module', '-e', script], { encoding: 'utf8' })) as Release;
      assert.equal(r.applied, true, r.applied ? '' : r.detail);
      if (!r.applied) return;
      assert.ok(r.mappings >= 2 && r.bytes > 50 * 2 ** 20, `${r.mappings} mappings, ${r.bytes} bytes advised`);
      // A bare Node process has 30-40 MiB of its binary resident after start-up.
      assert.ok(r.rssBeforeMiB - r.rssAfterMiB >= 10, `RSS ${r.rssBeforeMiB} -> ${r.rssAfterMiB} MiB`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
