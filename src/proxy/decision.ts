// One place where a policy decision meets a connection: the access log gets the deciding policy and
// the AUDIT matches, and a denial becomes the typed error the caller refuses the connection with.
import { PolicyDeniedError } from '../errors.ts';
import type { PolicyDecision } from '../policy/hook.ts';
import type { ConnectionHandle } from '../telemetry/connections.ts';

export function enforce(conn: ConnectionHandle, decision: PolicyDecision): void {
  if (decision.audit) conn.set({ audit: decision.audit });
  if (!decision.allowed) throw new PolicyDeniedError(decision.policy, decision.reason);
  if (decision.policy) conn.set({ policy: decision.policy });
}
