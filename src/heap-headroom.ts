// Headroom for V8's old generation, so that short-lived buffers outside the heap do not make the
// agent mark its whole heap over and over.
//
// Why: V8 counts the memory allocated outside its heap since the last full collection against the
// old generation's limit (the "historic behaviour" of `--no-external-memory-accounted-in-global-
// limit`, V8's default). Node's HTTP/2 reads every TLS record (16 KiB) of the tunnel into a new
// buffer outside the heap; on a bulk transfer the young-generation collections free them within
// milliseconds, but they still count. With the limit V8 gives a small heap, the receiving agent of a
// bulk transfer ran full mark-compacts every few tens of milliseconds, a large share of its CPU
// (bench/README.md, "What these say", bulk).
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
 * Below 1.5 the override could undercut V8's own dynamic factor; from there on (a live heap of
 * twice the headroom and more) V8 decides alone (percent 0).
 */
const MIN_PERCENT = 50;

/** The `--heap-growing-percent` that puts the next limit `headroomBytes` above `liveBytes`; 0: V8's own. */
export function growingPercent(liveBytes: number, headroomBytes: number): number {
  if (headroomBytes <= 0) return 0;
  const percent = Math.round((100 * headroomBytes) / Math.max(liveBytes, 1));
  return percent < MIN_PERCENT ? 0 : Math.min(percent, MAX_PERCENT);
}

/**
 * Keeps `headroomMiB` of old-generation headroom from now on (see above); 0 leaves V8 alone.
 * Returns the percent set now and a function that stops following the live heap.
 */
export function keepHeapHeadroom(headroomMiB: number): { percent: () => number; stop: () => void } {
  let current = -1;
  const apply = () => {
    const percent = growingPercent(v8.getHeapStatistics().used_heap_size, headroomMiB * MIB);
    if (percent === current) return;
    v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
    current = percent;
  };
  apply();
  if (headroomMiB <= 0) return { percent: () => current, stop: () => undefined };
  // Right after a full collection the used heap is about what is live.
  const observer = new PerformanceObserver((list) => {
    const entries = list.getEntries() as Array<PerformanceEntry & { detail?: { kind?: number } }>;
    if (entries.some((e) => e.detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR)) apply();
  });
  observer.observe({ entryTypes: ['gc'] });
  return { percent: () => current, stop: () => observer.disconnect() };
}
