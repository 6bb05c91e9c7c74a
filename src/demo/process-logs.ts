// The JSON log lines a process of the lab (an agent, the CA) has written to its log file so far.
import type { ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { LOG_FLUSH_MS } from '../telemetry/log.ts';

export async function readProcessLog(proc: { child: ChildProcess; logFile: string }): Promise<Array<Record<string, any>>> {
  // meshlet's processes write their log lines in batches (telemetry/log.ts): while one runs, wait a
  // batch out, so that what it did before the call is in its log file.
  if (proc.child.exitCode === null && proc.child.signalCode === null) await new Promise((r) => setTimeout(r, 2 * LOG_FLUSH_MS));
  // The log stream opens asynchronously: no file yet means no lines yet.
  const text = await readFile(proc.logFile, 'utf8').catch(() => '');
  return text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, any>);
}
