// The taint gate for fresh nodes (as Cilium's and istio-cni's): a node pool that registers its nodes
// with the `meshlet.dev/agent-not-ready:NoSchedule` taint gets no pods until its agent can serve
// them, because the agent removes the taint from its own node once it is ready. Without the taint
// nothing is written. The patch is a JSON patch that tests the taint's place first, so a taint list
// changed since it was read is never clobbered (the patch fails and is tried again on a fresh read).
import type { KubeConfig, V1Node } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { backoffMs } from '../backoff.ts';
import { apiPath, CONTENT, CORE, type KubeApi, kubeApi } from '../kube/api.ts';

export const NOT_READY_TAINT = 'meshlet.dev/agent-not-ready';

export interface TaintGateOptions {
  kubeConfig: KubeConfig;
  log: Logger;
  retryMinMs?: number;
  retryMaxMs?: number;
}

export class TaintGate {
  readonly #api: KubeApi;
  readonly #log: Logger;
  readonly #retry: { min: number; max: number };
  #state: { phase: 'idle' } | { phase: 'removing'; node: string; attempt: number; timer?: NodeJS.Timeout } | { phase: 'done' | 'closed' } = { phase: 'idle' };

  constructor(opts: TaintGateOptions) {
    this.#api = kubeApi(opts.kubeConfig);
    this.#log = opts.log.child({ component: 'taint-gate' });
    this.#retry = { min: opts.retryMinMs ?? 1000, max: opts.retryMaxMs ?? 30_000 };
  }

  /** The agent on `node` is ready: removes the taint, retrying until it is gone. Once per agent. */
  nodeReady(node: string): void {
    if (this.#state.phase !== 'idle') return;
    this.#state = { phase: 'removing', node, attempt: 0 };
    void this.#try();
  }

  get phase(): string {
    return this.#state.phase;
  }

  close(): void {
    if (this.#state.phase === 'removing' && this.#state.timer) clearTimeout(this.#state.timer);
    this.#state = { phase: 'closed' };
  }

  async #try(): Promise<void> {
    const s = this.#state;
    if (s.phase !== 'removing') return;
    try {
      const removed = await this.#remove(s.node);
      if (this.#state !== s) return;
      this.#state = { phase: 'done' };
      if (removed) this.#log.info({ node: s.node, taint: NOT_READY_TAINT }, 'agent ready: removed the not-ready taint from its node');
    } catch (err) {
      if (this.#state !== s) return;
      s.attempt++;
      const retryInMs = backoffMs(s.attempt, this.#retry.min, this.#retry.max);
      this.#log.warn({ node: s.node, err: (err as Error).message, retryInMs }, 'cannot remove the not-ready taint from this node (RBAC: patch on nodes); retrying');
      s.timer = setTimeout(() => void this.#try(), retryInMs);
      s.timer.unref();
    }
  }

  /** True when the taint was there and is now removed; false when the node never had it. */
  async #remove(name: string): Promise<boolean> {
    const path = apiPath(CORE.nodes, { name });
    const node = await this.#api.get<V1Node>(path);
    const taints = node.spec?.taints ?? [];
    const i = taints.findIndex((t) => t.key === NOT_READY_TAINT);
    if (i < 0) return false;
    await this.#api.send('PATCH', path,
      [{ op: 'test', path: `/spec/taints/${i}/key`, value: NOT_READY_TAINT }, { op: 'remove', path: `/spec/taints/${i}` }], CONTENT.jsonPatch);
    return true;
  }
}
