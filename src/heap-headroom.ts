// Headroom for V8's old generation, so that short-lived buffers outside the heap do not make the
// agent mark its whole heap over and over.
//
// Why: V8 counts the memory allocated outside its heap since the last full collection against the
// old generation's limit (the "historic behaviour" of `--no-external-memory-accounted-in-global-
// limit`, V8's default). Node's HTTP/2 reads every TLS record (16 KiB) of the tunnel into a new
// buffer outside the heap, dead once relayed but counted until a young collection frees it. With
// the limit V8 gives a small heap, the receiving agent of a bulk transfer ran full mark-compacts
// every few tens of milliseconds, a large share of its CPU (bench/README.md, "What these say",
// bulk). Since the data plane frees them every few MiB (proxy/young-collection.ts), a headroom
// far below the old one costs the bulk receiver no measurable CPU, and a burst of new connections,
// whose per-connection objects outlive the young generation, leaves that much less garbage resident
// (bench/README.md, "Dead chunks collected" and "A smaller headroom").
//
// How: after each full collection V8 sets the next limit at the live heap times a growing factor,
// which `--heap-growing-percent` overrides and V8 reads afresh each time. Once the agent is up, this
// keeps that factor at (live + headroom) / live, recomputed after every full collection as the
// live heap changes, so the next limit sits `headroom` above what is live (plus a growing step of
// V8's own: test/heap-headroom.test.ts reads the limits V8 prints). Set only after start-up: the
// start-up heap is collected as V8 would, and an idle agent's RSS does not change.
// The headroom is an upper bound on the extra heap, reached only by garbage that survives the
// young generation; the transient buffers above never take it up.
import { constants, type PerformanceEntry, PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';

const MIB = 1024 * 1024;
/** V8's own factor never exceeds 4 (for the largest heaps); neither does this. */
const MAX_PERCENT = 300;
/**
 * Past this live heap V8 decides alone (percent 0), as it did before for a large mesh's agent. Below
 * it the headroom holds even when it is a small share of the live heap: handed to V8 there, the
 * agents' heaps grew far past the headroom under load (bench/README.md, "Dead chunks collected").
 */
const V8_ALONE_PAST_BYTES = 64 * MIB;
/** A factor of 1.1, V8's smallest: the floor, and what a process short of memory keeps (memory-target.ts). */
export const MIN_GROWING_PERCENT = 10;

/**
 * The `--heap-growing-percent` that puts the next limit `headroomBytes` above `liveBytes`; 0: V8's
 * own. `floorPercent` (memory-target.ts, near its target): never less, and never V8's own, which
 * could be far more.
 */
export function growingPercent(liveBytes: number, headroomBytes: number, floorPercent?: number): number {
  if (headroomBytes <= 0 || (floorPercent === undefined && liveBytes > V8_ALONE_PAST_BYTES)) return 0;
  const percent = Math.round((100 * headroomBytes) / Math.max(liveBytes, 1));
  return Math.min(Math.max(percent, floorPercent ?? MIN_GROWING_PERCENT), MAX_PERCENT);
}

export interface HeapHeadroom {
  /** The percent set now. */
  percent(): number;
  /** Another headroom from now on (applied now, and after every full collection); see growingPercent. */
  set(headroomMiB: number, floorPercent?: number): void;
  /** Stops following the live heap. */
  stop(): void;
}

/** Keeps `headroomMiB` of old-generation headroom from now on (see above); 0 leaves V8 alone. */
export function keepHeapHeadroom(headroomMiB: number): HeapHeadroom {
  let current = -1;
  let headroom = headroomMiB;
  let floor: number | undefined;
  const apply = () => {
    const percent = growingPercent(v8.getHeapStatistics().used_heap_size, headroom * MIB, floor);
    if (percent === current) return;
    v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
    current = percent;
  };
  apply();
  let observer: PerformanceObserver | undefined;
  const follow = () => {
    if (observer || headroom <= 0) return;
    // Right after a full collection the used heap is about what is live.
    observer = new PerformanceObserver((list) => {
      const entries = list.getEntries() as Array<PerformanceEntry & { detail?: { kind?: number } }>;
      if (entries.some((e) => e.detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR)) apply();
    });
    observer.observe({ entryTypes: ['gc'] });
  };
  follow();
  return {
    percent: () => current,
    set: (mib, floorPercent) => {
      headroom = mib;
      floor = floorPercent;
      apply();
      follow();
    },
    stop: () => { observer?.disconnect(); observer = undefined; },
  };
}
