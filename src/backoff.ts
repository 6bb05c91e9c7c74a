// The one retry pace: exponential from `minMs`, doubling per failed attempt, capped at `maxMs`.
// Certificate issuance and the Kubernetes informers retry with it.

/** The delay before retry number `attempt` (1 after the first failure). */
export function backoffMs(attempt: number, minMs: number, maxMs: number): number {
  // 2^30 is far past any cap; the bound keeps the power finite for absurd attempt counts.
  return Math.min(maxMs, minMs * 2 ** Math.min(Math.max(attempt, 1) - 1, 30));
}
