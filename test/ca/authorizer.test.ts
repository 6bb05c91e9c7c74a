import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { stringify } from 'yaml';
import { createLocalAuthorizer, parseTokensFile } from '../../src/ca/authorizer.ts';
import { AuthorizerUnavailableError, ConfigError, IdentityNotAllowedError, TokenRejectedError } from '../../src/errors.ts';
import { DB, TOKENS, WEB, WORKLOADS } from '../support/ca.ts';

const log = pino({ level: 'silent' });

describe('local authorizer', () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), 'meshlet-authz-')); });
  after(() => rm(dir, { recursive: true, force: true }));

  it('lists every problem of a tokens file', () => {
    assert.throws(() => parseTokensFile(stringify({ tokens: [{ node: 'a', token: 'short' }, { node: '', token: 'x'.repeat(20) }, { node: 'a', token: 'x'.repeat(20) }] }), 'f'),
      (err: unknown) => {
        assert.ok(err instanceof ConfigError);
        const text = err.problems.join('\n');
        for (const re of [/tokens\[0\].token: required, at least 16/, /tokens\[1\].node: required/, /tokens\[2\]: node a listed twice/, /same token is given to two nodes/]) assert.match(text, re);
        return true;
      });
    assert.throws(() => parseTokensFile('[1, 2', 'f'), /not valid YAML/);
    assert.throws(() => parseTokensFile('nodes: []', 'f'), /"tokens" list/);
  });

  it('maps tokens to nodes and allows only identities of pods on that node; follows both files', async () => {
    const tokensFile = join(dir, 'tokens.yaml');
    const workloadsFile = join(dir, 'workloads.yaml');
    await writeFile(tokensFile, stringify({ tokens: [{ node: 'node-a', token: TOKENS['node-a'] }] }));
    await writeFile(workloadsFile, stringify(WORKLOADS));
    const authz = createLocalAuthorizer({ tokensFile, workloadsFile, log, pollIntervalMs: 20 });
    await authz.start();
    try {
      assert.equal(authz.ready(), true);
      const who = await authz.authenticate(TOKENS['node-a']);
      assert.deepEqual(who, { node: 'node-a', subject: 'token:node-a' });
      await assert.rejects(authz.authenticate(TOKENS['node-b']), TokenRejectedError);
      await assert.rejects(authz.authenticate(''), TokenRejectedError);
      await authz.authorize(who, WEB);
      await assert.rejects(authz.authorize(who, DB), IdentityNotAllowedError);

      // db moves to node-a; node-b gets a token; a broken tokens file keeps the last good one.
      await writeFile(workloadsFile, stringify({ ...WORKLOADS, workloads: WORKLOADS.workloads.map((w) => ({ ...w, node: 'node-a' })) }));
      await writeFile(tokensFile, stringify({ tokens: Object.entries(TOKENS).map(([node, token]) => ({ node, token })) }));
      await eventually(async () => { await authz.authorize(who, DB); await authz.authenticate(TOKENS['node-b']); });
      await writeFile(tokensFile, 'tokens: [ {node: x, token: short} ]');
      await new Promise((r) => setTimeout(r, 200));
      assert.equal((await authz.authenticate(TOKENS['node-b'])).node, 'node-b');
    } finally {
      await authz.close();
    }
  });

  it('says it cannot decide before placement is loaded', async () => {
    const tokensFile = join(dir, 'tokens2.yaml');
    await writeFile(tokensFile, stringify({ tokens: [{ node: 'node-a', token: TOKENS['node-a'] }] }));
    const authz = createLocalAuthorizer({
      tokensFile, workloadsFile: 'unused', log,
      source: { start: async () => undefined, close: async () => undefined },
    });
    await authz.start();
    try {
      assert.equal(authz.ready(), false);
      await assert.rejects(authz.authorize({ node: 'node-a', subject: 's' }, WEB), AuthorizerUnavailableError);
    } finally {
      await authz.close();
    }
  });
});

async function eventually(fn: () => Promise<void>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await fn();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
}
