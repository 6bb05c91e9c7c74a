// A young-generation collection after every few MiB of tunnel data handed over in fresh buffers,
// so that the dead ones are freed within those few MiB instead of whenever V8's young generation
// happens to fill.
//
// Why: Node's HTTP/2 hands each DATA chunk over in a new buffer outside V8's heap (and a socket
// without pooled reads, read-buffers.ts, a new one per read), freed only when a young collection
// finds it dead. A chunk of up to 16 KiB (a TLS record) leaves few objects in the young generation,
// so a bulk receiver collected seldom: many MiB of dead data resident at once, and counted by V8
// against the old generation's limit, the reason the heap's headroom had to be large
// (heap-headroom.ts). Capped here, a small headroom does and the agent's loaded peak is lower,
// at a few more young collections per GB (bench/README.md, "Dead chunks collected").
//
// How: each thread (module state is per isolate) counts the bytes relay.ts forwards from such ends
// and collects its young generation every `--young-collection` MiB, which its data plane sets (0:
// never, V8 alone). A young collection is V8's cheapest (what it costs grows with the young objects
// still alive, and between chunks there are few), but not free: its price per GB is in the README.
import { collectGarbage } from '../collect-garbage.ts';

export class YoungCollection {
  #since = 0;
  #collections = 0;
  #everyBytes: number;
  readonly #collect: () => void;

  /** `everyBytes` 0: never. `collect` (tests inject one): a young collection of this thread's isolate. */
  constructor(everyBytes: number, collect: () => void = () => collectGarbage('minor')) {
    this.#everyBytes = everyBytes;
    this.#collect = collect;
  }

  /** From now on every `bytes` (0: never). */
  setEvery(bytes: number): void {
    this.#everyBytes = bytes;
  }

  /** `bytes` more were handed over in buffers of their own; collects once `everyBytes` have been. */
  note(bytes: number): void {
    if (this.#everyBytes <= 0) return;
    this.#since += bytes;
    if (this.#since < this.#everyBytes) return;
    // One collection frees them all, however many intervals one large chunk spans.
    this.#since %= this.#everyBytes;
    this.#collections++;
    this.#collect();
  }

  /** Collections made so far. */
  collections(): number {
    return this.#collections;
  }
}

/** This thread's: relay.ts notes every chunk it forwards from an end without pooled reads; off until a data plane sets it. */
export const freshChunks = new YoungCollection(0);
