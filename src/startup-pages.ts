// The pages of the Node binary that start-up touched, handed back to the kernel once the process
// is up.
//
// Why: about half an idle agent's RSS is the Node binary itself (its code and read-only data, 47-53
// MiB of 100 in /proc/PID/smaps), and most of that was touched once: compiling and loading modules,
// parsing configuration, the first sync. Those pages stay mapped, counted in RSS and charged to the
// container's memory, for as long as the process lives. madvise(MADV_PAGEOUT) on the binary's
// read-only mappings (Linux 5.4) reclaims them; what the agent still runs faults back in from the
// file the first time it runs (a disk read, once per page). Measured in bench/README.md ("Agent
// memory in Kubernetes mode").
//
// Where another process maps the same file (the page is in more than one page table: a CA on the
// same node from the same image, or every meshlet process of a test run), the kernel leaves the
// page alone: nothing is taken from anyone else.
import { readFileSync, realpathSync } from 'node:fs';
import koffi from 'koffi';
import type { Logger } from 'pino';

// From the kernel's uapi mman-common.h.
const MADV_PAGEOUT = 21;

/** How long after ready: past the first snapshot's and the certificates' bursts. */
export const RELEASE_AFTER_READY_MS = 5_000;

export interface Mapping { start: number; end: number; perms: string }

/** The read-only mappings (code and constants) of `path` in a /proc/PID/maps text. */
export function readOnlyMappings(maps: string, path: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of maps.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s+(.*)$/.exec(line);
    if (!m || m[4] !== path || m[3]![1] === 'w') continue;
    out.push({ start: Number.parseInt(m[1]!, 16), end: Number.parseInt(m[2]!, 16), perms: m[3]! });
  }
  return out;
}

/** VmRSS of this process, MiB. */
function rssMiB(): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  return kb ? Math.round(Number(kb) / 1024) : Number.NaN;
}

export type Release = { applied: true; mappings: number; bytes: number; rssBeforeMiB: number; rssAfterMiB: number } | { applied: false; detail: string };

/** Advises the kernel to page out the binary's read-only mappings now; never throws. */
export function releaseStartupPages(): Release {
  let madvise: (addr: number, length: number, advice: number) => number;
  let mappings: Mapping[];
  try {
    madvise = koffi.load('libc.so.6').func('int madvise(uintptr_t, size_t, int)') as typeof madvise;
    mappings = readOnlyMappings(readFileSync('/proc/self/maps', 'utf8'), realpathSync(process.execPath));
  } catch (err) {
    return { applied: false, detail: `not on Linux with glibc: ${(err as Error).message}` };
  }
  if (mappings.length === 0) return { applied: false, detail: 'no mapping of the Node binary found' };
  const rssBeforeMiB = rssMiB();
  let bytes = 0;
  for (const m of mappings) {
    // EINVAL before Linux 5.4: the advice is unknown there, and nothing else changes.
    if (madvise(m.start, m.end - m.start, MADV_PAGEOUT) !== 0) return { applied: false, detail: 'madvise(MADV_PAGEOUT) refused (Linux before 5.4?)' };
    bytes += m.end - m.start;
  }
  return { applied: true, mappings: mappings.length, bytes, rssBeforeMiB, rssAfterMiB: rssMiB() };
}

let scheduled = false;

/** Once per process (whatever calls it again): releases the pages `afterMs` from now and logs it. */
export function releaseStartupPagesOnce(enabled: boolean, log: Logger, afterMs = RELEASE_AFTER_READY_MS): void {
  if (!enabled || scheduled) return;
  scheduled = true;
  setTimeout(() => {
    const r = releaseStartupPages();
    if (r.applied) log.info(r, 'start-up pages of the Node binary handed back to the kernel');
    else log.info({ detail: r.detail }, 'start-up pages not handed back');
  }, afterMs).unref();
}
