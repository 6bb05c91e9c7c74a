import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { enableMigrateReq } from '../../src/capture/sysctl.ts';

describe('tcp_migrate_req', () => {
  it('turns it on, leaves it on, and explains when it cannot', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'meshlet-sysctl-'));
    try {
      const file = join(dir, 'tcp_migrate_req');
      await writeFile(file, '0\n');
      assert.deepEqual(await enableMigrateReq(file), { ok: true, detail: 'turned on' });
      assert.equal((await readFile(file, 'utf8')).trim(), '1');
      assert.deepEqual(await enableMigrateReq(file), { ok: true, detail: 'already on' });
      assert.deepEqual(await enableMigrateReq(join(dir, 'missing')), { ok: false, detail: 'this kernel has no tcp_migrate_req (older than 5.14)' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
