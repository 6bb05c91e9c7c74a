import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runCommand, shellQuote, ShellRunner } from '../../src/capture/exec.ts';

const EXEC = fileURLToPath(new URL('../../src/capture/exec.ts', import.meta.url));

/** Runs `body` with a fresh runner and a scratch directory; closes and removes both after. */
async function withRunner(body: (runner: ShellRunner, dir: string) => Promise<void>, opts?: { timeoutMs?: number }): Promise<void> {
  const runner = new ShellRunner(opts);
  const dir = mkdtempSync(join(tmpdir(), 'meshlet-exec-'));
  try {
    await body(runner, dir);
  } finally {
    runner.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('ShellRunner', () => {
  it('gives each command its own stdout, stderr and exit code, as a spawn would', () => withRunner(async (runner) => {
    const script = 'printf "out without newline"; printf "err line\\n" >&2; exit 3';
    assert.deepEqual(await runner.run('sh', ['-c', script]), await runCommand('sh', ['-c', script]));
    assert.deepEqual(await runner.run('sh', ['-c', script]), { code: 3, stdout: 'out without newline', stderr: 'err line\n' });
    assert.deepEqual(await runner.run('echo', ['two words', "it's", '$HOME', '`id`', '"q"']),
      { code: 0, stdout: 'two words it\'s $HOME `id` "q"\n', stderr: '' });
    assert.deepEqual(await runner.run('true', []), { code: 0, stdout: '', stderr: '' });
  }));

  it('passes standard input verbatim, shell syntax and all', () => withRunner(async (runner) => {
    const input = '*nat\n-A X -m comment --comment "meshlet: a $VAR `cmd` \\ \'q\'"\nCOMMIT\n';
    assert.equal((await runner.run('cat', [], input)).stdout, input);
    // Input without a final newline gets one (the tools read lines).
    assert.equal((await runner.run('cat', [], 'add s 10.0.0.1')).stdout, 'add s 10.0.0.1\n');
    // Without input a command reads end of file at once, never the shell's own input.
    assert.deepEqual(await runner.run('cat', []), { code: 0, stdout: '', stderr: '' });
  }));

  it('reports a missing command as ENOENT, like spawn, and keeps working', () => withRunner(async (runner) => {
    await assert.rejects(runner.run('meshlet-no-such-command', ['x']), (err: NodeJS.ErrnoException) => err.code === 'ENOENT');
    assert.equal((await runner.run('echo', ['after'])).stdout, 'after\n');
  }));

  it('runs commands one at a time, in the order asked', () => withRunner(async (runner, dir) => {
    const mark = join(dir, 'first-done');
    // Asked at once: the second only finds the first's file if it ran after the first had finished.
    const [first, second] = await Promise.all([
      runner.run('sh', ['-c', `sleep 0.2; echo first; touch ${mark}`]),
      runner.run('sh', ['-c', `test -e ${mark} && echo second >&2`]),
    ]);
    assert.deepEqual([first.stdout, second.stderr, second.code], ['first\n', 'second\n', 0]);
    // A large output arrives whole, in many chunks.
    const big = await runner.run('sh', ['-c', 'seq 1 200000']);
    assert.equal(big.stdout.split('\n').length, 200_001);
    assert.equal(big.stdout.split('\n')[199_999], '200000');
  }));

  it('fails the command in progress when the shell dies, and starts a new shell for the next', async () => {
    let runner: ShellRunner | undefined;
    await withRunner(async (r) => {
      runner = r;
      // The command kills its own shell ($PPID is the shell that runs it).
      await assert.rejects(r.run('sh', ['-c', 'kill -9 $PPID; sleep 1']), /shell exited/);
      assert.equal((await r.run('echo', ['again'])).stdout, 'again\n');
    });
    await assert.rejects(runner!.run('echo', ['closed']), /closed/);
  });

  it('kills a command that runs past its time, with everything it started, and goes on', () => withRunner(async (runner, dir) => {
    const pidFile = join(dir, 'pid');
    const started = Date.now();
    await assert.rejects(runner.run('sh', ['-c', `echo $$ > ${pidFile}; sleep 30`]), /did not finish within 300 ms; killed/);
    assert.ok(Date.now() - started < 5_000);
    const pid = Number(readFileSync(pidFile, 'utf8'));
    await new Promise((r) => setTimeout(r, 100));
    // Gone, or dead and waiting to be reaped (a zombie: whoever is PID 1 here may reap late).
    const state = (() => { try { return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0]; } catch { return 'gone'; } })();
    assert.ok(state === 'gone' || state === 'Z', `the stuck command is gone too (state ${state})`);
    assert.equal((await runner.run('echo', ['next'])).stdout, 'next\n');
  }, { timeoutMs: 300 }));

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
