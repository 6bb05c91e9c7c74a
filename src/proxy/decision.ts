// One place where a policy decision meets a connection: the access log gets the deciding policy and
// the AUDIT matches, and a denial becomes the typed error the caller refuses the connection with.
// The decision is made again on every change while the connection is open (enforceAndGuard).
import { PolicyDeniedError } from '../errors.ts';
import type { PolicyDecision } from '../policy/hook.ts';
import type { ConnectionHandle } from '../telemetry/connections.ts';
import type { Workload } from '../workloads/model.ts';
import type { WorkloadRegistry } from '../workloads/registry.ts';

export function enforce(conn: ConnectionHandle, decision: PolicyDecision): void {
  const { audit, auditUnmatched } = decision;
  if (audit) conn.set({ audit });
  if (auditUnmatched) conn.set({ auditUnmatched });
  if (!decision.allowed) throw new PolicyDeniedError(decision.policy, decision.reason);
  if (decision.policy) conn.set({ policy: decision.policy });
}

/**
 * Decides now, and again on every change of policies, labels, mTLS modes or membership while the
 * connection is open (ConnectionTracker.recheck): a connection that would now be refused is ended,
 * its access-log line naming the policy that ended it. `decide` reads the registry as it is then.
 */
export function enforceAndGuard(conn: ConnectionHandle, decide: () => PolicyDecision): void {
  enforce(conn, decide());
  conn.guard(() => {
    const d = decide();
    if (!d.allowed) throw new PolicyDeniedError(d.policy, `re-checked after a change: ${d.reason}`);
  });
}

/**
 * The registry's current object for a workload a connection was decided for: its labels and
 * namespace may have changed since. While its address holds the same identity in the mesh; after
 * that (the pod left the mesh or its address went to another pod) the one the decision was made
 * for, since its connections are not another workload's.
 */
export function current(registry: WorkloadRegistry, w: Workload): Workload {
  const now = registry.findWorkload(w.ip);
  return now && now.captured && now.spiffeId === w.spiffeId ? now : w;
}
