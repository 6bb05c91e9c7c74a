// Drives the API stand-in run as its own process (apiserver-main.ts) from a benchmark: its hello,
// then one command at a time, each awaited to its reply.
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface StandInProcess {
  /** Where it listens, and the token clients present. */
  listening: string;
  token: string;
  call(op: object): Promise<unknown>;
  put(resource: string, obj: object): Promise<unknown>;
}

export async function driveStandIn(child: ChildProcess): Promise<StandInProcess> {
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async () => JSON.parse((await lines.next()).value as string);
  const hello = await next() as { listening: string; token: string };
  let id = 0;
  const call = async (op: object) => {
    child.stdin!.write(`${JSON.stringify({ id: ++id, ...op })}\n`);
    const reply = await next() as { ok: boolean; error?: string; value?: unknown };
    if (!reply.ok) throw new Error(reply.error);
    return reply.value;
  };
  return { ...hello, call, put: (resource, obj) => call({ op: 'put', resource, obj }) };
}
