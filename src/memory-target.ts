// A soft memory target (`--memory-target`; the manifests pass the container's memory limit): near
// it, the process (agent or CA) gives up the reserves of memory it keeps to save CPU, until it is
// well below again.
//
// Why: the old generation's headroom (heap-headroom.ts) lets thousands of new connections leave up
// to 32 MiB of garbage resident, and what glibc keeps free (malloc-tuning.ts) stays until the
// timed trim. Both save CPU, and both can take a process past what its pod requests (the first
// evicted when the node runs short) or up to its limit (bench/README.md, "A memory target").
// Go's GOMEMLIMIT makes the same trade: collect more often near a limit, never fail at it.
//
// How: the resident set is read every `everyMs` (a read of /proc/self/stat). From `PRESS_AT` of
// the target the process is pressed: the heap's headroom shrinks to what is left below the target
// (at least `MIN_HEADROOM_MIB`, a factor down to 1.1), and one full collection applies it at once
// (V8 reads the factor only when it sets the next limit); what glibc holds free is trimmed. Each
// check that finds the process over the target itself collects the young generation and trims
// again: a bulk transfer's tunnel data arrives in a new buffer per chunk (Node's HTTP/2), and dead
// ones are freed only by the next young collection, which a few hundred bytes of objects per chunk
// make rare. Below `RELAX_AT` the trades come back. The gap between the two keeps one burst from
// flapping them. The price of each: bench/README.md, "A memory target".
import { type Collection, collectGarbage } from './collect-garbage.ts';
import { type HeapHeadroom, keepHeapHeadroom, MIN_GROWING_PERCENT } from './heap-headroom.ts';
import { trimMalloc } from './malloc-tuning.ts';

export const PRESS_AT = 0.85;
export const RELAX_AT = 0.75;
export const MIN_HEADROOM_MIB = 4;

export type MemoryPressure =
  | { kind: 'off' }
  | { kind: 'relaxed'; targetMiB: number; episodes: number }
  | { kind: 'pressed'; targetMiB: number; episodes: number; since: number };

/** The next state for a resident set of `rssMiB`: pressed from PRESS_AT of the target, relaxed below RELAX_AT. */
export function nextPressure(state: MemoryPressure, rssMiB: number, now: number): MemoryPressure {
  if (state.kind === 'off') return state;
  if (state.kind === 'relaxed' && rssMiB >= state.targetMiB * PRESS_AT) {
    return { kind: 'pressed', targetMiB: state.targetMiB, episodes: state.episodes + 1, since: now };
  }
  if (state.kind === 'pressed' && rssMiB < state.targetMiB * RELAX_AT) {
    return { kind: 'relaxed', targetMiB: state.targetMiB, episodes: state.episodes };
  }
  return state;
}

/** What pressure turns: the process's are the heap headroom and glibc (processDials). */
export interface MemoryDials {
  press(rssMiB: number): void;
  /** Each later check that finds the process pressed. */
  stillPressed(rssMiB: number): void;
  relax(): void;
}

export interface MemoryTargetWatch {
  state(): MemoryPressure;
  /** Reads the resident set and acts on it now (the timer calls it every `everyMs`). */
  check(): void;
  stop(): void;
}

export function watchMemoryTarget(opts: {
  targetMiB: number; dials: MemoryDials; everyMs?: number;
  rssMiB?: () => number; now?: () => number; onChange?: (state: MemoryPressure) => void;
}): MemoryTargetWatch {
  const rssMiB = opts.rssMiB ?? (() => process.memoryUsage.rss() / (1024 * 1024));
  const now = opts.now ?? Date.now;
  let state: MemoryPressure = opts.targetMiB > 0 ? { kind: 'relaxed', targetMiB: opts.targetMiB, episodes: 0 } : { kind: 'off' };
  const check = () => {
    const rss = rssMiB();
    const next = nextPressure(state, rss, now());
    const was = state.kind;
    state = next;
    if (was === 'relaxed' && next.kind === 'pressed') opts.dials.press(rss);
    else if (was === 'pressed' && next.kind === 'relaxed') opts.dials.relax();
    else if (next.kind === 'pressed') opts.dials.stillPressed(rss);
    if (was !== next.kind) opts.onChange?.(next);
  };
  if (state.kind === 'off') return { state: () => state, check, stop: () => undefined };
  const timer = setInterval(check, opts.everyMs ?? 100);
  timer.unref();
  return { state: () => state, check, stop: () => clearInterval(timer) };
}

/** The headroom a pressed process keeps: what is left below the target, within [MIN_HEADROOM_MIB, the usual]. */
export function pressedHeadroomMiB(rssMiB: number, targetMiB: number, headroomMiB: number): number {
  return Math.max(MIN_HEADROOM_MIB, Math.min(headroomMiB, Math.floor(targetMiB - rssMiB)));
}

/** The process's own dials: the heap's headroom (heap-headroom.ts) and what glibc holds free (malloc-tuning.ts). */
export function processDials(heap: HeapHeadroom, headroomMiB: number, targetMiB: number, workers?: { collectGarbage(type: Collection): void }): MemoryDials {
  // Each isolate collects its own heap: this thread's here, the data-plane workers' by message.
  const collect = (type: Collection) => { collectGarbage(type); workers?.collectGarbage(type); };
  let pressed: number | undefined;
  const shrink = (rssMiB: number) => {
    pressed = pressedHeadroomMiB(rssMiB, targetMiB, headroomMiB);
    heap.set(pressed, MIN_GROWING_PERCENT);
  };
  return {
    press: (rssMiB) => {
      // The collection sets the next limit with the factor set before it; after it, the factor for
      // what is live (the GC observer would too, a little later).
      shrink(rssMiB);
      collect('major');
      shrink(rssMiB);
      trimMalloc();
    },
    stillPressed: (rssMiB) => {
      // Unchanged, the factor stays as the last full collection left it: the heap holds garbage now.
      if (pressedHeadroomMiB(rssMiB, targetMiB, headroomMiB) !== pressed) shrink(rssMiB);
      if (rssMiB < targetMiB) return;
      collect('minor');
      trimMalloc();
    },
    relax: () => {
      pressed = undefined;
      heap.set(headroomMiB);
    },
  };
}

export interface KeptMemory { heap: HeapHeadroom; target: MemoryTargetWatch; stop(): void }

/** From the end of start-up on (heap-headroom.ts): the heap's headroom, and the target's watch over both trades. */
export function keepMemory(opts: {
  headroomMiB: number; targetMiB: number; log: { info(obj: object, msg: string): void }; workers?: { collectGarbage(type: Collection): void };
}): KeptMemory {
  const heap = keepHeapHeadroom(opts.headroomMiB);
  const target = watchMemoryTarget({
    targetMiB: opts.targetMiB, dials: processDials(heap, opts.headroomMiB, opts.targetMiB, opts.workers),
    onChange: (m) => opts.log.info({ memory: m }, m.kind === 'pressed' ? 'near the memory target: trading CPU for memory' : 'memory well below its target'),
  });
  return { heap, target, stop: () => { target.stop(); heap.stop(); } };
}
