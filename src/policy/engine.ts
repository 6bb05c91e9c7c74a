// The MeshPolicy engine: the PolicyEngine the data path calls, fed by every registry snapshot.
//
// Order of evaluation (Istio's, at L4): AUDIT policies that match are recorded (and those that
// select the destination but do not match, as what they would deny as ALLOW); any matching DENY
// denies; if any ALLOW policy selects the destination, the connection must match one of them; with
// no ALLOW policy selecting it, it is allowed. mTLS mode comes from the destination's namespace
// (`meshlet.dev/mtls`, default permissive).
import type { Logger } from 'pino';
import type { MeshPolicyObject, MeshSnapshot, MtlsMode, Workload } from '../workloads/model.ts';
import { CompiledPolicies, type CompiledPolicy, ROOT_NAMESPACE } from './compile.ts';
import type { ConnectionAttributes, PolicyDecision, PolicyEngine } from './hook.ts';

/** The name decisions carry when ALLOW policies select a workload and none matched. */
export const NO_ALLOW_MATCHED = 'no-allow-matched';
/** The name a refusal of plaintext to a STRICT namespace carries. */
export const MTLS_STRICT = 'mtls-strict';

/** Plaintext (no verified identity) towards a workload: refused when its namespace is STRICT. */
export function plaintextRefusal(engine: PolicyEngine, destination: Workload): PolicyDecision | undefined {
  // A pod leaving the mesh is reached as without it: its clients already dial it directly.
  if (destination.leaving || engine.mtlsMode(destination) !== 'strict') return undefined;
  return { allowed: false, policy: MTLS_STRICT, reason: `plaintext to ${destination.namespace}/${destination.name} is refused in STRICT mode` };
}

/** The engine as /config_dump shows it. */
export interface PolicyDump {
  generation: number;
  rootNamespace: string;
  mtls: Readonly<Record<string, MtlsMode>>;
  policies: Array<Pick<CompiledPolicy, 'id' | 'action' | 'rules'> & { warnings?: string[]; errors?: string[] }>;
  decisions: DecisionCount[];
}

/** audit_unmatched: an AUDIT policy selected the destination and did not match (it would deny as ALLOW). */
export type DecisionAction = 'allow' | 'deny' | 'audit' | 'audit_unmatched';

export interface DecisionCount {
  action: DecisionAction;
  policy: string;
  count: number;
}

const NO_AUDIT = {};

export class MeshPolicyEngine implements PolicyEngine {
  #compiled = new CompiledPolicies([]);
  #objects: readonly MeshPolicyObject[] = [];
  #mtls: Readonly<Record<string, MtlsMode>> = {};
  readonly #counts = new Map<string, DecisionCount>();
  readonly #rootNamespace: string;
  readonly #log: Logger | undefined;
  /** Bumped on every recompilation (the config dump shows it; tests wait on it). */
  generation = 0;

  readonly #onDecision: ((action: DecisionCount['action'], policy: string) => void) | undefined;

  constructor(opts: { rootNamespace?: string; log?: Logger; onDecision?(action: DecisionCount['action'], policy: string): void } = {}) {
    this.#rootNamespace = opts.rootNamespace ?? ROOT_NAMESPACE;
    this.#log = opts.log?.child({ component: 'policy' });
    this.#onDecision = opts.onDecision;
  }

  /** Takes a snapshot's policies and mTLS modes; recompiles only when the policies changed. */
  update(snapshot: Pick<MeshSnapshot, 'policies' | 'mtls'>): void {
    this.#mtls = snapshot.mtls;
    if (samePolicies(this.#objects, snapshot.policies)) return;
    this.#objects = snapshot.policies;
    this.#compiled = new CompiledPolicies(snapshot.policies, this.#rootNamespace);
    this.generation++;
    for (const p of this.#compiled.all) {
      if (p.errors.length > 0) this.#log?.error({ policy: p.id, action: p.action, errors: p.errors }, 'policy cannot be read; enforced fail-closed');
      if (p.warnings.length > 0) this.#log?.warn({ policy: p.id, warnings: p.warnings }, 'policy has fields meshlet cannot enforce at L4');
    }
    this.#log?.info({ policies: this.#compiled.all.length, generation: this.generation }, 'policies compiled');
  }

  authorize(c: ConnectionAttributes): PolicyDecision {
    const a = this.#compiled.applicable(c.destination);
    let audit: string[] | undefined;
    let auditUnmatched: string[] | undefined;
    for (const p of a.audit) {
      if (p.matches(c)) {
        (audit ??= []).push(p.id);
        this.#count('audit', p.id);
      } else {
        (auditUnmatched ??= []).push(p.id);
        this.#count('audit_unmatched', p.id);
      }
    }
    const withAudit = a.audit.length === 0 ? NO_AUDIT : { ...(audit ? { audit } : {}), ...(auditUnmatched ? { auditUnmatched } : {}) };
    for (const p of a.deny) {
      if (p.matches(c)) {
        this.#count('deny', p.id);
        return { allowed: false, policy: p.id, reason: p.errors.length > 0 ? 'the DENY policy cannot be read and denies everything it selects' : 'a DENY rule matched', ...withAudit };
      }
    }
    if (a.allow.length === 0) return { allowed: true, ...withAudit };
    for (const p of a.allow) {
      if (p.matches(c)) {
        this.#count('allow', p.id);
        return { allowed: true, policy: p.id, ...withAudit };
      }
    }
    this.#count('deny', NO_ALLOW_MATCHED);
    return {
      allowed: false, policy: NO_ALLOW_MATCHED,
      reason: `ALLOW policies select ${c.destination.namespace}/${c.destination.name} (${a.allow.map((p) => p.id).join(', ')}) and none matched`,
      ...withAudit,
    };
  }

  mtlsMode(destination: Workload): MtlsMode {
    return this.#mtls[destination.namespace] ?? 'permissive';
  }

  allowPassthrough(): PolicyDecision {
    // Leaving the mesh is not authorized at L4 (as in Istio without an egress gateway).
    return { allowed: true };
  }

  /** The compiled policies that select a workload (what `meshlet policy check` reports on). */
  selecting(w: Workload): CompiledPolicy[] {
    const a = this.#compiled.applicable(w);
    return [...a.deny, ...a.allow, ...a.audit];
  }

  decisions(): DecisionCount[] {
    return [...this.#counts.values()];
  }

  dump(): PolicyDump {
    return {
      generation: this.generation,
      rootNamespace: this.#rootNamespace,
      mtls: this.#mtls,
      policies: this.#compiled.all.map((p: CompiledPolicy) => ({
        id: p.id, action: p.action, rules: p.rules,
        ...(p.warnings.length ? { warnings: p.warnings } : {}), ...(p.errors.length ? { errors: p.errors } : {}),
      })),
      decisions: this.decisions(),
    };
  }

  #count(action: DecisionCount['action'], policy: string): void {
    this.#onDecision?.(action, policy);
    const key = `${action}|${policy}`;
    const c = this.#counts.get(key);
    if (c) c.count++;
    else this.#counts.set(key, { action, policy, count: 1 });
  }
}

/** Same list of the same spec objects: a snapshot that only moved pods keeps the compiled set. */
function samePolicies(a: readonly MeshPolicyObject[], b: readonly MeshPolicyObject[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  return a.every((p, i) => p.namespace === b[i]!.namespace && p.name === b[i]!.name && p.spec === b[i]!.spec);
}
