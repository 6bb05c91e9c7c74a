// What a process costs, read from /proc: CPU seconds, resident and proportional memory. The lab's
// tests and the benchmarks read their agents' with these.
import { readFileSync } from 'node:fs';

/** /proc/PID/stat as numbers by field (1-based, as proc(5) numbers them); field 2, the name, may hold spaces. */
function statFields(pid: number): (n: number) => number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (n) => Number(fields[n - 3]);
}

/** utime + stime of a process in seconds (fields 14 and 15 of /proc/PID/stat, 100 ticks a second). */
export function processCpuSeconds(pid: number): number {
  const field = statFields(pid);
  return (field(14) + field(15)) / 100;
}

/** Minor page faults of a process so far (field 10 of /proc/PID/stat): memory handed back and taken again. */
export function processMinorFaults(pid: number): number {
  return statFields(pid)(10);
}

/** Major page faults so far (field 12): pages read back from a file, e.g. the Node binary's once given back. */
export function processMajorFaults(pid: number): number {
  return statFields(pid)(12);
}

/**
 * Proportional set size in MiB: pages shared with other processes (the node binary's, for N sidecars
 * of the same image) counted as a share. Beside RSS, which counts them whole in every process.
 */
export function processPssMiB(pid: number): number {
  const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Resident set size of a process in MiB. */
export function processRssMiB(pid: number): number {
  return statusMiB(pid, 'VmRSS');
}

/** The highest resident set size since the process started (VmHWM), in MiB. */
export function processPeakRssMiB(pid: number): number {
  return statusMiB(pid, 'VmHWM');
}

/** RSS split: anonymous memory (heaps, V8's and malloc's) and file pages (the Node binary), in MiB. */
export function processRssParts(pid: number): { anonMiB: number; fileMiB: number } {
  return { anonMiB: statusMiB(pid, 'RssAnon'), fileMiB: statusMiB(pid, 'RssFile') };
}

function statusMiB(pid: number, field: 'VmRSS' | 'VmHWM' | 'RssAnon' | 'RssFile'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}
