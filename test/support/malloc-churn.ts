// A child process for test/malloc-tuning.test.ts: grows glibc's heap by a hundred 96 KiB blocks
// and frees them, once and then 30 times more, and prints the page faults per round of those 30 as
// JSON. First, with `default`, it puts glibc's trim threshold at its documented default (128 KiB):
// glibc raises it on its own after freeing large mmapped blocks, so what a process starts with
// depends on what it did before. With `tune` it calls tuneMalloc(); with `tune trim` it prints how
// much of the freed round trimMallocEvery hands back instead. Run in a process of its own:
// malloc's settings are process-wide.
import { readFileSync } from 'node:fs';
import koffi from 'koffi';
import { trimMallocEvery, tuneMalloc } from '../../src/malloc-tuning.ts';

const lib = koffi.load('libc.so.6');
const malloc = lib.func('void *malloc(size_t)') as (n: number) => unknown;
const free = lib.func('void free(void *)') as (p: unknown) => void;
const memset = lib.func('void *memset(void *, int, size_t)') as (p: unknown, c: number, n: number) => unknown;
const minorFaults = () => Number(readFileSync('/proc/self/stat', 'utf8').split(') ')[1]?.split(' ')[7]);

const mallopt = lib.func('int mallopt(int, int)') as (param: number, value: number) => number;
const M_TRIM_THRESHOLD = -1;
if (process.argv[2] === 'default' && mallopt(M_TRIM_THRESHOLD, 128 * 1024) !== 1) throw new Error('mallopt failed');
const tuned = process.argv[2] === 'tune' ? tuneMalloc() : undefined;
const BLOCK = 96 * 1024;
const ROUNDS = 30;
function round(): void {
  const blocks = [];
  for (let k = 0; k < 100; k++) {
    const p = malloc(BLOCK);
    memset(p, 1, BLOCK); // touch every page, as a real buffer's first write does
    blocks.push(p);
  }
  for (const p of blocks) free(p);
}
round(); // the first growth of the heap faults its pages in whatever the settings
if (process.argv[3] === 'trim') {
  // What the tuned heap keeps after the round, then what the periodic trim leaves of it.
  const rssBytes = () => Number(readFileSync('/proc/self/statm', 'utf8').split(' ')[1]) * 4096;
  const kept = rssBytes();
  trimMallocEvery(20);
  const deadline = Date.now() + 10_000;
  while (rssBytes() > kept - 8e6 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  process.stdout.write(`${JSON.stringify({ tuned, releasedBytes: kept - rssBytes() })}\n`);
  process.exit(0);
}
const before = minorFaults();
for (let i = 0; i < ROUNDS; i++) round();
process.stdout.write(`${JSON.stringify({ tuned, faultsPerRound: (minorFaults() - before) / ROUNDS })}\n`);
