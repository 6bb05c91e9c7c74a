import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command with optional standard input; never rejects on a non-zero exit. */
export function runCommand(cmd: string, args: string[], input?: string): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) => resolve({
      code: code ?? 1,
      stdout: Buffer.concat(out).toString(),
      stderr: Buffer.concat(err).toString(),
    }));
    child.stdin.on('error', () => { /* the command may exit before reading its input */ });
    child.stdin.end(input ?? '');
  });
}

/**
 * Runs commands through one long-lived /bin/sh instead of a new process each. Spawning from a
 * process forks it, and the fork blocks the event loop while the kernel copies the page tables, the
 * longer the larger the process (bench/README.md, "Measurements behind the code"). The
 * agent runs a capture tool every second (the probe gate's ipset refresh) and three every 5 s (the
 * capture check), so each of its busy moments would stall every connection it carries; the shell,
 * a megabyte of memory, does the forking instead. One command at a time, in the order asked; a
 * command that runs past `timeoutMs` is killed with its shell (the shell leads its own process
 * group), so one stuck tool cannot hold up the commands queued behind it for ever.
 */
export class ShellRunner {
  readonly #marker = `__meshlet_done_${randomUUID().replaceAll('-', '')}`;
  readonly #timeoutMs: number;
  #child: ChildProcessWithoutNullStreams | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  constructor(opts: { timeoutMs?: number } = {}) {
    this.#timeoutMs = opts.timeoutMs ?? 30_000;
  }

  run(cmd: string, args: string[], input?: string): Promise<CommandResult> {
    if (this.#closed) return Promise.reject(new Error('the command runner is closed'));
    const next = this.#queue.then(() => this.#runOne(cmd, args, input));
    this.#queue = next.catch(() => undefined);
    return next;
  }

  /** Ends the shell (it exits on end of input); a command in progress still completes. */
  close(): void {
    this.#closed = true;
    this.#child?.stdin.end();
    this.#child = undefined;
  }

  #shell(): ChildProcessWithoutNullStreams {
    if (this.#child && this.#child.exitCode === null && this.#child.signalCode === null) return this.#child;
    const child = spawn('/bin/sh', [], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    // A shell that fails or dies fails the command in progress (#runOne); the next one starts another.
    child.on('error', () => { if (this.#child === child) this.#child = undefined; });
    child.stdin.on('error', () => undefined);
    // Idle, the shell must not keep the process alive; #runOne refs it while a command runs.
    child.unref();
    for (const s of [child.stdin, child.stdout, child.stderr]) (s as unknown as { unref?(): void }).unref?.();
    this.#child = child;
    return child;
  }

  #runOne(cmd: string, args: string[], input?: string): Promise<CommandResult> {
    const child = this.#shell();
    const marker = this.#marker;
    return new Promise((resolve, reject) => {
      let out = '';
      let err = '';
      let code: number | undefined;
      let errDone = false;
      const streams = [child.stdout, child.stderr] as unknown as Array<{ ref?(): void; unref?(): void }>;
      for (const s of streams) s.ref?.();
      const timer = setTimeout(() => {
        // The shell and whatever it runs share a process group: kill them all; the next command
        // starts a new shell.
        if (this.#child === child) this.#child = undefined;
        try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* already gone */ }
        finish(undefined, new Error(`${cmd} did not finish within ${this.#timeoutMs} ms; killed`));
      }, this.#timeoutMs);
      const finish = (result?: CommandResult, error?: Error) => {
        clearTimeout(timer);
        child.stdout.off('data', onOut);
        child.stderr.off('data', onErr);
        child.off('exit', onExit);
        child.off('error', onExit);
        for (const s of streams) s.unref?.();
        if (error) reject(error); else resolve(result!);
      };
      const settle = () => {
        if (code === undefined || !errDone) return;
        // 127: the shell did not find the command, which spawn reports as ENOENT.
        if (code === 127) finish(undefined, Object.assign(new Error(`${cmd}: not found`), { code: 'ENOENT' }));
        else finish({ code, stdout: out, stderr: err });
      };
      const onOut = (d: Buffer) => {
        out += d.toString();
        if (!out.endsWith('\n')) return;
        const at = out.lastIndexOf(`\n${marker} `);
        if (at < 0) return;
        code = Number(out.slice(at + marker.length + 2, -1));
        out = out.slice(0, at);
        settle();
      };
      const onErr = (d: Buffer) => {
        err += d.toString();
        if (err.endsWith(`\n${marker}\n`)) { err = err.slice(0, -(marker.length + 2)); errDone = true; settle(); }
      };
      const onExit = () => { this.#child = undefined; finish(undefined, new Error(`the command shell exited while running ${cmd}`)); };
      child.stdout.on('data', onOut);
      child.stderr.on('data', onErr);
      child.once('exit', onExit);
      child.once('error', onExit);
      const line = [cmd, ...args].map(shellQuote).join(' ');
      const body = input === undefined || input === '' ? `${line} </dev/null` : `${line} <<'${marker}'\n${input.endsWith('\n') ? input : `${input}\n`}${marker}`;
      // The marker after the output (on a line of its own) ends it, on both streams.
      child.stdin.write(`${body}\nprintf '\\n%s %d\\n' ${marker} "$?"; printf '\\n%s\\n' ${marker} >&2\n`);
    });
  }
}

/** One word for /bin/sh, whatever it contains. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", "'\\''")}'`;
}

const CAP_NET_ADMIN = 12;

/** Whether this process holds CAP_NET_ADMIN (read from /proc, so it works for non-root too). */
export function hasNetAdmin(): boolean {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
    if (!hex) return false;
    return ((BigInt(`0x${hex}`) >> BigInt(CAP_NET_ADMIN)) & 1n) === 1n;
  } catch {
    return false;
  }
}
