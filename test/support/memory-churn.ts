// A child process for test/memory-target.test.ts: churns memory as a burst of new connections does
// (objects that live long enough to reach the old generation, then die; buffers malloc'd outside
// the heap) for 3 s under keepMemory with a 32 MiB headroom, and prints as JSON the largest V8 heap
// and RSS it saw, and the target's state. `off`: no target. `near`: a target just above the RSS
// the process has once set up, so that the churn presses it.
import { keepMemory, PRESS_AT } from '../../src/memory-target.ts';
import { tuneMalloc } from '../../src/malloc-tuning.ts';
import v8 from 'node:v8';

const MIB = 1024 * 1024;
tuneMalloc();
const rss = () => process.memoryUsage.rss() / MIB;
const logged: string[] = [];
const targetMiB = process.argv[2] === 'near' ? Math.ceil((rss() + 6) / PRESS_AT) : 0;
const kept = keepMemory({ headroomMiB: 32, targetMiB, log: { info: (_o, msg) => { logged.push(msg); } } });

const ring: unknown[][] = [];
let maxHeap = 0;
let maxRss = 0;
const until = Date.now() + 3000;
function churn(): void {
  const batch: unknown[] = [];
  for (let i = 0; i < 4000; i++) batch.push({ i, name: `conn-${i}`, at: [i, i + 1] });
  batch.push(Buffer.alloc(64 * 1024, 1));
  ring.push(batch);
  if (ring.length > 40) ring.shift();
  maxHeap = Math.max(maxHeap, v8.getHeapStatistics().total_heap_size / MIB);
  maxRss = Math.max(maxRss, rss());
  if (Date.now() < until) setTimeout(churn, 2);
  else {
    kept.stop();
    process.stdout.write(`${JSON.stringify({ targetMiB, maxHeapMiB: maxHeap, maxRssMiB: maxRss, state: kept.target.state(), logged })}\n`);
  }
}
churn();
