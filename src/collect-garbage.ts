// A garbage collection on demand in this thread's isolate (memory-target.ts asks it of the agent's
// thread and of each data-plane worker), without `--expose-gc` on the command line, which would
// hand every module a global `gc`: the flag set at run time gives new contexts the function, and
// only the one made here holds it.
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';

export type Collection = 'major' | 'minor';

let gc: ((opts: { type: Collection }) => void) | undefined;

/** A full collection, or of the young generation alone. */
export function collectGarbage(type: Collection = 'major'): void {
  if (!gc) {
    v8.setFlagsFromString('--expose-gc');
    gc = runInNewContext('gc') as typeof gc;
  }
  gc!({ type });
}
