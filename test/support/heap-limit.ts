// A child process for test/heap-headroom.test.ts, run with --expose-gc --trace-gc-nvp: keeps about
// 15 MB live, starts keepHeapHeadroom(MIB) and runs two full collections, the second with the limit
// the first computed under the headroom's growing percent. V8 prints each collection's figures
// (start_object_size, old_gen_allocation_limit); the last line here is the percent that was set.
import { keepHeapHeadroom } from '../../src/heap-headroom.ts';

const live: unknown[] = [];
for (let i = 0; i < 100_000; i++) live.push({ i, s: `item-${i}` });
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with --expose-gc');
gc();
const kept = keepHeapHeadroom(Number(process.argv[2]));
gc();
gc();
kept.stop();
process.stdout.write(`percent=${kept.percent()} live=${live.length}\n`);
