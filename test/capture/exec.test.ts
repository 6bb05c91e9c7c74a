import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runCommand, shellQuote, ShellRunner } from '../../src/capture/exec.ts';

const EXEC = fileURLToPath(new URL('../../src/capture/exec.ts', import.meta.url));

describe('ShellRunner', () => {
  it('gives each command its own stdout, stderr and exit code, as a spawn would', async () => {
    const runner = new ShellRunner();
    try {
      const script = 'printf "out without newline"; printf "err line\\n" >&2; exit 3';
      assert.deepEqual(await runner.run('sh', ['-c', script]), await runCommand('sh', ['-c', script]));
      assert.deepEqual(await runner.run('sh', ['-c', script]), { code: 3, stdout: 'out without newline', stderr: 'err line\n' });
      assert.deepEqual(await runner.run('echo', ['two words', "it's", '$HOME', '`id`', '"q"']),
        { code: 0, stdout: 'two words it\'s $HOME `id` "q"\n', stderr: '' });
      assert.deepEqual(await runner.run('true', []), { code: 0, stdout: '', stderr: '' });
    } finally {
      runner.close();
    }
  });

  it('passes standard input verbatim, shell syntax and all', async () => {
    const runner = new ShellRunner();
    try {
      const input = '*nat\n-A X -m comment --comment "meshlet: a $VAR `cmd` \\ \'q\'"\nCOMMIT\n';
      assert.equal((await runner.run('cat', [], input)).stdout, input);
      // Input without a final newline gets one (the tools read lines).
      assert.equal((await runner.run('cat', [], 'add s 10.0.0.1')).stdout, 'add s 10.0.0.1\n');
      // Without input a command reads end of file at once, never the shell's own input.
      assert.deepEqual(await runner.run('cat', []), { code: 0, stdout: '', stderr: '' });
    } finally {
      runner.close();
    }
  });

  it('reports a missing command as ENOENT, like spawn, and keeps working', async () => {
    const runner = new ShellRunner();
    try {
      await assert.rejects(runner.run('meshlet-no-such-command', ['x']), (err: NodeJS.ErrnoException) => err.code === 'ENOENT');
      assert.equal((await runner.run('echo', ['after'])).stdout, 'after\n');
    } finally {
      runner.close();
    }
  });

  it('runs commands one at a time, in the order asked', async () => {
    const runner = new ShellRunner();
    try {
      const results = await Promise.all([
        runner.run('sh', ['-c', 'sleep 0.2; echo first']),
        runner.run('echo', ['second']),
        runner.run('sh', ['-c', 'echo third >&2']),
      ]);
      assert.deepEqual(results.map((r) => r.stdout + r.stderr), ['first\n', 'second\n', 'third\n']);
      // A large output arrives whole, in many chunks.
      const big = await runner.run('sh', ['-c', 'seq 1 200000']);
      assert.equal(big.stdout.split('\n').length, 200_001);
      assert.equal(big.stdout.split('\n')[199_999], '200000');
    } finally {
      runner.close();
    }
  });

  it('fails the command in progress when the shell dies, and starts a new shell for the next', async () => {
    const runner = new ShellRunner();
    try {
      // The command kills its own shell ($PPID is the shell that runs it).
      await assert.rejects(runner.run('sh', ['-c', 'kill -9 $PPID; sleep 1']), /shell exited/);
      assert.equal((await runner.run('echo', ['again'])).stdout, 'again\n');
    } finally {
      runner.close();
    }
    await assert.rejects(runner.run('echo', ['closed']), /closed/);
  });

  it('kills a command that runs past its time, with everything it started, and goes on', async () => {
    const runner = new ShellRunner({ timeoutMs: 300 });
    const pidFile = join(mkdtempSync(join(tmpdir(), 'meshlet-exec-')), 'pid');
    try {
      const started = Date.now();
      await assert.rejects(runner.run('sh', ['-c', `echo $$ > ${pidFile}; sleep 30`]), /did not finish within 300 ms; killed/);
      assert.ok(Date.now() - started < 5_000);
      const pid = Number(readFileSync(pidFile, 'utf8'));
      await new Promise((r) => setTimeout(r, 100));
      // Gone, or dead and waiting to be reaped (a zombie: whoever is PID 1 here may reap late).
      const state = (() => { try { return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0]; } catch { return 'gone'; } })();
      assert.ok(state === 'gone' || state === 'Z', `the stuck command is gone too (state ${state})`);
      assert.equal((await runner.run('echo', ['next'])).stdout, 'next\n');
    } finally {
      runner.close();
      rmSync(dirname(pidFile), { recursive: true, force: true });
    }
  });

  it('does not keep the process alive once idle', async () => {
    const started = Date.now();
    const code = `import { ShellRunner } from ${JSON.stringify(EXEC)};
      const r = new ShellRunner(); const out = await r.run('echo', ['ran']); process.stdout.write(out.stdout);`;
    const stdout = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--input-type=module', '-e', code], { timeout: 10_000 }, (err, out) => (err ? reject(err) : resolve(out)));
    });
    assert.equal(stdout, 'ran\n');
    assert.ok(Date.now() - started < 8_000, 'the process exited on its own');
  });
});

describe('shellQuote', () => {
  it('leaves plain words alone and single-quotes the rest', () => {
    assert.equal(shellQuote('iptables-save'), 'iptables-save');
    assert.equal(shellQuote('0x539/0xfff'), '0x539/0xfff');
    assert.equal(shellQuote('a b'), "'a b'");
    assert.equal(shellQuote("it's"), "'it'\\''s'");
    assert.equal(shellQuote(''), "''");
  });
});
