// Every MeshPolicy's `Accepted` condition, so that `kubectl get mp -o yaml` says whether the agents
// enforce a policy as written or reject it (fail closed) and why. The agents compile each policy
// the same way (policy/compile.ts); one writer per cluster keeps the API's write load independent of
// the node count, so the CA's replicas write it: each compares before it patches, and two replicas
// computing the same condition write it once.
import type { KubeConfig, KubernetesObject, KubernetesListObject } from '@kubernetes/client-node';
// The informer alone, not the package's index (kube/load-less.ts).
import { makeInformer } from '@kubernetes/client-node/dist/informer.js';
import type { Logger } from 'pino';
import { backoffMs } from '../backoff.ts';
import { apiPath, CONTENT, type KubeApi, kubeApi } from '../kube/api.ts';
import { compilePolicy } from '../policy/compile.ts';
import { MESH_POLICY, slimPolicy } from '../workloads/kubernetes-objects.ts';

export const ACCEPTED = 'Accepted';

export interface PolicyCondition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason?: string;
  message?: string;
  observedGeneration?: number;
  lastTransitionTime?: string;
}

interface PolicyObject extends KubernetesObject {
  spec?: unknown;
  status?: { conditions?: PolicyCondition[] };
}

/** The condition the agents' compilation of this object implies; the transition time kept while the status holds. */
export function acceptedCondition(o: PolicyObject, now: Date): PolicyCondition {
  const slim = slimPolicy(o);
  const compiled = compilePolicy({ namespace: slim.metadata.namespace!, name: slim.metadata.name!, spec: slim.spec as Record<string, unknown>, ...(slim.problems ? { problems: slim.problems } : {}) });
  const failClosed = compiled.action === 'DENY' ? 'every connection to the workloads it selects is denied' : 'it allows nothing';
  const c: PolicyCondition = compiled.errors.length > 0
    ? { type: ACCEPTED, status: 'False', reason: 'CannotBeEnforced', message: `rejected, so it fails closed (${failClosed}): ${compiled.errors.join('; ')}` }
    : { type: ACCEPTED, status: 'True', reason: 'Enforced',
      message: compiled.warnings.length > 0 ? compiled.warnings.join('; ') : `${compiled.rules} rule(s), enforced at L4 by every agent` };
  if (typeof o.metadata?.generation === 'number') c.observedGeneration = o.metadata.generation;
  const previous = o.status?.conditions?.find((x) => x.type === ACCEPTED);
  c.lastTransitionTime = previous?.status === c.status && previous.lastTransitionTime ? previous.lastTransitionTime : now.toISOString();
  return c;
}

/** Whether the object already says what `c` says (the transition time aside). */
export function conditionHolds(o: PolicyObject, c: PolicyCondition): boolean {
  const p = o.status?.conditions?.find((x) => x.type === ACCEPTED);
  return !!p && p.status === c.status && p.reason === c.reason && p.message === c.message && p.observedGeneration === c.observedGeneration;
}

export class PolicyStatusWriter {
  readonly #api: KubeApi;
  readonly #log: Logger;
  readonly #now: () => Date;
  readonly #informer;
  #failures = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** Patches written and failed, for the log and the tests. */
  readonly counts = { written: 0, failed: 0 };

  constructor(opts: { kubeConfig: KubeConfig; log: Logger; now?: () => Date; retryMinMs?: number }) {
    this.#api = kubeApi(opts.kubeConfig);
    this.#log = opts.log.child({ component: 'policy-status' });
    this.#now = opts.now ?? (() => new Date());
    const path = apiPath(MESH_POLICY);
    this.#informer = makeInformer<PolicyObject>(opts.kubeConfig, path, () => this.#api.get<KubernetesListObject<PolicyObject>>(path) as never);
    const write = (o: PolicyObject) => { this.#write(o).catch(() => undefined); };
    this.#informer.on('add', write);
    this.#informer.on('update', write);
    this.#informer.on('connect', () => { this.#failures = 0; });
    // The CRD may come later than the CA, or the API go away: list again at the retry pace.
    this.#informer.on('error', (err) => {
      if (this.#stopped) return;
      const retryInMs = backoffMs(++this.#failures, opts.retryMinMs ?? 1000, 30_000);
      this.#log.warn({ err: (err as Error)?.message ?? String(err), retryInMs }, 'cannot watch MeshPolicies (RBAC: list and watch meshpolicies); retrying');
      this.#timer = setTimeout(() => { this.#informer.start().catch(() => undefined); }, retryInMs);
    });
  }

  async start(): Promise<void> {
    await this.#informer.start().catch(() => undefined);
  }

  async #write(o: PolicyObject): Promise<void> {
    const c = acceptedCondition(o, this.#now());
    if (conditionHolds(o, c)) return;
    const others = (o.status?.conditions ?? []).filter((x) => x.type !== ACCEPTED);
    const where = { namespace: o.metadata!.namespace!, name: o.metadata!.name! };
    try {
      await this.#api.send('PATCH', apiPath(MESH_POLICY, { ...where, subresource: 'status' }),
        [{ op: 'add', path: '/status', value: { conditions: [...others, c] } }], CONTENT.jsonPatch);
      this.counts.written++;
      this.#log.info({ policy: `${where.namespace}/${where.name}`, accepted: c.status, reason: c.reason }, 'MeshPolicy status written');
    } catch (err) {
      this.counts.failed++;
      this.#log.warn({ policy: `${where.namespace}/${where.name}`, err: (err as Error).message }, 'cannot write MeshPolicy status (RBAC: patch meshpolicies/status)');
    }
  }

  close(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#informer.stop();
  }
}
