// glibc's malloc, told to keep freed memory at the top of its heap instead of handing it back to
// the kernel at once.
//
// Why: by default glibc returns the top of its heap to the kernel (brk) as soon as more than 128 KiB
// of it is free, and the next allocation takes it back: fresh pages, each a page fault and a page
// the kernel zeroes. The tunnel's TLS reads go through OpenSSL buffers malloc'd and freed per record.
// After a few thousand connections had come and gone, the receiving agent of a bulk transfer
// shrank and regrew its heap thousands of times per transfer and spent a tenth of its CPU in the
// kernel's page-fault path (strace, perf: bench/README.md, "What these say", bulk).
//
// How: mallopt, through koffi (the FFI capture/socket.ts uses), at agent start: a trim threshold of
// 32 MiB (memory at the top is handed back only past that) and a top pad of 4 MiB (each growth of
// the heap asks for that much more). The cost is at most that much free memory kept resident; the
// agents' RSS after the bulk runs was the same (bench/README.md). Setting either makes
// glibc keep its mmap threshold fixed at 128 KiB instead of adapting it, as the MALLOC_*_ environment
// variables do. Not glibc (musl, another libc): nothing to tune, nothing done.
//
// The price of the threshold is free memory kept resident for good: up to 32 MiB per arena of what
// start-up (certificates, the first snapshot) and each burst freed. So every few seconds
// malloc_trim(0) hands back what is free, at the top and inside every arena (the worker threads'
// too): the heap then regrows at most once per interval instead of once per TLS record, and an
// idle agent holds what it uses (bench/README.md, "Agent memory in Kubernetes mode").
import koffi from 'koffi';
import { collectGarbage } from './collect-garbage.ts';

// From glibc's malloc.h.
const M_TRIM_THRESHOLD = -1;
const M_TOP_PAD = -2;

export const TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024;
export const TOP_PAD_BYTES = 4 * 1024 * 1024;

/** Applies the settings above; says what happened, never throws. */
export function tuneMalloc(): { applied: boolean; detail: string } {
  let mallopt: (param: number, value: number) => number;
  try {
    mallopt = koffi.load('libc.so.6').func('int mallopt(int, int)') as typeof mallopt;
  } catch (err) {
    return { applied: false, detail: `no glibc mallopt here: ${(err as Error).message}` };
  }
  // mallopt returns 1 on success, 0 on error.
  const ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) === 1 && mallopt(M_TOP_PAD, TOP_PAD_BYTES) === 1;
  return ok
    ? { applied: true, detail: `trim threshold ${TRIM_THRESHOLD_BYTES >> 20} MiB, top pad ${TOP_PAD_BYTES >> 20} MiB` }
    : { applied: false, detail: 'mallopt refused the settings' };
}

let mallocTrim: ((pad: number) => number) | null | undefined;

/** malloc_trim(0): whether glibc handed memory back; false without glibc. */
export function trimMalloc(): boolean {
  if (mallocTrim === undefined) {
    try {
      mallocTrim = koffi.load('libc.so.6').func('int malloc_trim(size_t)') as (pad: number) => number;
    } catch {
      mallocTrim = null;
    }
  }
  return mallocTrim ? mallocTrim(0) === 1 : false;
}

/**
 * Trims every `intervalMs` (0: never) on a timer that never keeps the process up; returns stop.
 * A young collection first, here and in the isolates `others` asks (the data-plane workers, whose
 * memory the next trim hands back): after a burst the dead chunks of tunnel data (buffers outside
 * the heap, held by young objects) stay until a collection, which an idle process never makes.
 */
export function trimMallocEvery(intervalMs: number, others?: { collectGarbage(type: 'minor'): void }): () => void {
  if (intervalMs <= 0) return () => undefined;
  const timer = setInterval(() => { others?.collectGarbage('minor'); collectGarbage('minor'); trimMalloc(); }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
