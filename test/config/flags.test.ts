// Flags as data (src/config/flags.ts): one table gives parsing, validation, defaults and help.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { loadStatusConfig, loadCostConfig } from '../../src/config/commands.ts';
import { loadCaInitConfig } from '../../src/config/ca.ts';
import { type Flag, flagHelp, readFlags } from '../../src/config/flags.ts';
import { ConfigError } from '../../src/errors.ts';

const TABLE = [
  { name: 'wait', type: 'duration', min: 100, max: 60_000, default: '5s', help: 'how long' },
  { name: 'count', type: 'int', min: 1, max: 10, default: '3', help: 'how many' },
  { name: 'port', type: 'port', default: '8080', help: 'where' },
  { name: 'mode', type: 'one-of', values: ['fast', 'safe'], default: 'safe', help: 'how' },
  { name: 'log', type: 'on-off', default: 'on', help: 'lines' },
  { name: 'name', type: 'text', arg: 'NAME', env: ['A_NAME', 'B_NAME'], help: 'who' },
  { name: 'tag', type: 'list', arg: 'TAG', help: 'tags' },
  { name: 'dry', type: 'boolean', help: 'nothing' },
] as const satisfies readonly Flag[];

const problems = (run: () => unknown) => {
  try { run(); return []; } catch (err) { assert.ok(err instanceof ConfigError, String(err)); return err.problems; }
};

describe('flag tables', () => {
  it('gives typed values: defaults parsed as if typed, then the environment, then the command line', () => {
    const d = readFlags(TABLE, []);
    assert.deepEqual(d.values, { wait: 5000, count: 3, port: 8080, mode: 'safe', log: true, name: undefined, tag: [], dry: false });
    assert.equal(d.given('name'), false);
    const e = readFlags(TABLE, [], { B_NAME: 'b' });
    assert.equal(e.values.name, 'b');
    assert.equal(e.given('name'), true);
    assert.equal(readFlags(TABLE, [], { A_NAME: 'a', B_NAME: 'b' }).values.name, 'a', 'the first variable set wins');
    const v = readFlags(TABLE, ['--wait', '250ms', '--count=7', '--mode', 'fast', '--log', 'off', '--name', 'x', '--tag', 'p', '--tag', 'q', '--dry'], { A_NAME: 'a' }).values;
    assert.deepEqual(v, { wait: 250, count: 7, port: 8080, mode: 'fast', log: false, name: 'x', tag: ['p', 'q'], dry: true });
  });

  it('collects every bad value at once; an unknown flag is an error of its own', () => {
    const r = readFlags(TABLE, ['--wait', '1h', '--count', '0', '--port', '70000', '--mode', 'slow', '--log', 'yes']);
    assert.deepEqual(r.problems.list, [
      '--wait: 1h is outside 100 ms .. 60000 ms',
      '--count: "0" is not a whole number in 1 .. 10',
      '--port: "70000" is not a TCP port',
      '--mode: "slow" is not one of fast, safe',
      '--log: "yes" is not on or off',
    ]);
    assert.match(problems(() => readFlags(TABLE, ['--bogus'])).join(), /Unknown option '--bogus'/);
  });

  it('prints each flag with its value\'s form, its help and where its default comes from', () => {
    const text = flagHelp(TABLE);
    assert.match(text, /^ {2}--wait DUR +how long \[5s\]$/m);
    assert.match(text, /^ {2}--mode fast\|safe +how \[safe\]$/m);
    assert.match(text, /^ {2}--name NAME +who \[\$A_NAME, then \$B_NAME\]$/m);
    assert.match(text, /^ {2}--dry +nothing$/m);
  });

  it('refuses what the operators issue found accepted: a bad trust domain, an admin URL that is none, a CPU request of 0', () => {
    assert.match(problems(() => loadCaInitConfig(['--out', 'd', '--trust-domain', 'Bad_TD'])).join(), /--trust-domain: "Bad_TD" is not a trust domain/);
    assert.match(problems(() => loadCaInitConfig([])).join(), /--out is required/);
    assert.match(problems(() => loadStatusConfig(['--admin', 'notaurl'])).join(), /--admin: "notaurl" is not an http:\/\/ URL/);
    assert.match(problems(() => loadCostConfig(['--agent-cpu', '0'])).join(), /--agent-cpu: "0" is not a CPU quantity above 0/);
    // Through the real entry point: bad flags exit 2.
    const r = spawnSync(process.execPath, [new URL('../../src/main.js', import.meta.url).pathname, 'status', '--admin', 'notaurl'], { encoding: 'utf8' });
    assert.equal(r.status, 2, r.stderr);
  });
});
