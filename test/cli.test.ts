// The command line itself: --version, and help per command (the real entry point, spawned).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

const MAIN = new URL('../src/main.js', import.meta.url).pathname;
const meshlet = (...args: string[]) => spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8' });
const version = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

describe('meshlet command line', () => {
  it('prints its version, and Node\'s, with --version, -V or version', () => {
    for (const flag of ['--version', '-V', 'version']) {
      const r = meshlet(flag);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, `meshlet ${version} (node ${process.version}, ${process.platform}-${process.arch})\n`);
    }
  });

  it('gives each command its own help: its usage lines and its flags, not the others\'', () => {
    const agent = meshlet('agent', '--help');
    assert.equal(agent.status, 0);
    assert.match(agent.stdout, /^usage:\n  meshlet agent/);
    // From the flag table: each flag once, with its default.
    assert.match(agent.stdout, /--drain DUR +how long SIGTERM lets open connections finish \[5s\]/);
    assert.match(agent.stdout, /--node NAME +this node's name \[\$MESHLET_NODE_NAME, then \$NODE_NAME\]/);
    assert.match(agent.stdout, /--tunnel-stall-timeout/);
    assert.match(agent.stdout, /--capture-backend/, 'the capture flags the agent takes too');
    assert.doesNotMatch(agent.stdout, /--pods-per-node|--root-secret/, 'another command\'s flags');
    const cost = meshlet('cost', '--help');
    assert.match(cost.stdout, /--pods-per-node/);
    assert.doesNotMatch(cost.stdout, /--tunnel-stall-timeout/);
    const ca = meshlet('ca', '-h');
    assert.match(ca.stdout, /ca rotate/);
    assert.match(ca.stdout, /--root-secret/);
    assert.match(ca.stdout, /ca init flags/);
    // With no command: every command, where their flags are, and exit 2.
    const none = meshlet();
    assert.equal(none.status, 2);
    assert.match(none.stdout, /meshlet <command> --help for its flags/);
    for (const c of ['init', 'agent', 'ca serve', 'policy check', 'policy suggest', 'status', 'cost', 'demo']) assert.match(none.stdout, new RegExp(`^  ${c}`, 'm'));
  });
});
