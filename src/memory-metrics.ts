// The memory target's two series (memory-target.ts), for the agent's registry and the CA's alike.
import { Counter, Gauge, type Registry } from 'prom-client';
import type { MemoryPressure } from './memory-target.ts';

/** `meshlet_memory_pressed` and `_total` for the agent's or the CA's registry; no series without a target. */
export function registerMemoryMetrics(registers: Registry[], state: () => MemoryPressure | undefined): void {
  new Gauge({
    name: 'meshlet_memory_pressed', registers,
    help: '1 while the process is near its --memory-target and trades CPU for memory (smaller heap headroom, malloc trimmed), else 0 (no series without a target)',
    collect() {
      const m = state();
      this.reset();
      if (m && m.kind !== 'off') this.set(m.kind === 'pressed' ? 1 : 0);
    },
  });
  new Counter({
    name: 'meshlet_memory_pressed_total', registers,
    help: 'Times the process came near its --memory-target',
    collect() {
      const m = state();
      this.reset();
      if (m && m.kind !== 'off') this.inc(m.episodes);
    },
  });
}
