// The CA in a cluster (@kubernetes/client-node's configuration, plain REST: kube/api.ts):
//
// - Authorization: the agent's projected ServiceAccount token is checked with a TokenReview for the
//   audience `meshlet-ca`; it must belong to the meshlet agent's ServiceAccount; the node comes from
//   the token's bound-object claims (node-name, or the bound pod's spec.nodeName on clusters older
//   than 1.30 that do not embed it); each requested identity must match a live pod on that node.
// - The root lives in a Secret the CA creates on first start when absent and never overwrites.
// - The trust bundle is published in a ConfigMap that agents mount as their --trust-bundle.
import type { KubeConfig, V1ConfigMap, V1Pod, V1PodList, V1Secret, V1TokenReview } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { AuthorizerUnavailableError, CaError, IdentityNotAllowedError, TokenRejectedError } from '../errors.ts';
import { parseWorkloadId } from '../identity/spiffe.ts';
import type { RootFiles, RootSet, RootStore } from '../identity/roots.ts';
import type { NodeAuthorizer, NodeIdentity } from './authorizer.ts';
import { apiPath, CORE, type KubeApi, kubeApi } from '../kube/api.ts';
import { apiStatus, MIRROR_ANNOTATION } from '../kube/config.ts';

export const CA_AUDIENCE = 'meshlet-ca';
const NODE_NAME_CLAIM = 'authentication.kubernetes.io/node-name';
const POD_NAME_CLAIM = 'authentication.kubernetes.io/pod-name';
const POD_UID_CLAIM = 'authentication.kubernetes.io/pod-uid';

export interface KubernetesAuthorizerOptions {
  kubeConfig: KubeConfig;
  /** The agent's ServiceAccount: only its tokens are accepted. */
  agentNamespace: string;
  agentServiceAccount: string;
  log: Logger;
  audience?: string;
}

function unavailable(what: string, err: unknown): AuthorizerUnavailableError {
  const status = apiStatus(err);
  return new AuthorizerUnavailableError(`${what}: ${status ? `Kubernetes API answered ${status}` : (err as Error).message}`);
}

export function createKubernetesAuthorizer(opts: KubernetesAuthorizerOptions): NodeAuthorizer {
  const api = kubeApi(opts.kubeConfig);
  const audience = opts.audience ?? CA_AUDIENCE;
  const agentUser = `system:serviceaccount:${opts.agentNamespace}:${opts.agentServiceAccount}`;
  const log = opts.log.child({ component: 'authorizer' });
  let apiOk = false;

  const nodeOfBoundPod = async (podName: string, podUid: string | undefined): Promise<string> => {
    let pod: V1Pod;
    try {
      pod = await api.get<V1Pod>(apiPath(CORE.pods, { namespace: opts.agentNamespace, name: podName }));
    } catch (err) {
      if (apiStatus(err) === 404) throw new TokenRejectedError(`the token's pod ${opts.agentNamespace}/${podName} no longer exists`);
      throw unavailable('cannot read the token\'s pod', err);
    }
    if (podUid && pod.metadata?.uid !== podUid) throw new TokenRejectedError(`the token's pod ${podName} was replaced (uid mismatch)`);
    const node = pod.spec?.nodeName;
    if (!node) throw new TokenRejectedError(`the token's pod ${podName} is not scheduled on a node`);
    return node;
  };

  return {
    name: 'kubernetes',
    async start() {
      // Not fatal: the CA starts while the API is unreachable and says "not ready" until it answers.
      try {
        await api.get(apiPath(CORE.pods, { namespace: opts.agentNamespace }), { limit: 1 });
        apiOk = true;
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'Kubernetes API not reachable yet');
      }
    },
    async authenticate(token): Promise<NodeIdentity> {
      let review: V1TokenReview;
      try {
        review = await api.send('POST', '/apis/authentication.k8s.io/v1/tokenreviews', { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [audience] } });
        apiOk = true;
      } catch (err) {
        apiOk = apiStatus(err) !== undefined;
        throw unavailable('TokenReview failed', err);
      }
      const status = review.status;
      if (!status?.authenticated) throw new TokenRejectedError(status?.error ?? 'not authenticated');
      if (status.audiences && !status.audiences.includes(audience)) throw new TokenRejectedError(`token is not for audience ${audience}`);
      const username = status.user?.username ?? '';
      if (username !== agentUser) throw new TokenRejectedError(`token belongs to ${username || 'nobody'}, not the meshlet agent (${agentUser})`);
      const extra = status.user?.extra ?? {};
      const node = extra[NODE_NAME_CLAIM]?.[0];
      if (node) return { node, subject: username };
      const podName = extra[POD_NAME_CLAIM]?.[0];
      if (!podName) throw new TokenRejectedError('token is not bound to a pod (use a projected ServiceAccount token)');
      return { node: await nodeOfBoundPod(podName, extra[POD_UID_CLAIM]?.[0]), subject: username };
    },
    async authorize(who, spiffeId) {
      const id = parseWorkloadId(spiffeId);
      let onNode: V1Pod[];
      try {
        // Only this namespace's pods on this node: the field selector keeps the answer small.
        onNode = (await api.get<V1PodList>(apiPath(CORE.pods, { namespace: id.namespace }), { fieldSelector: `spec.nodeName=${who.node}` })).items ?? [];
        apiOk = true;
      } catch (err) {
        apiOk = apiStatus(err) !== undefined;
        throw unavailable(`cannot list pods of ${id.namespace} on ${who.node}`, err);
      }
      // A mirror pod is whatever its kubelet wrote (in any namespace, with no service account): a
      // compromised node must not mint identities with one. A pod without a service account has none.
      const runs = onNode.some((p) => p.spec?.serviceAccountName === id.serviceAccount
        && p.metadata?.annotations?.[MIRROR_ANNOTATION] === undefined
        && p.spec?.nodeName === who.node
        && !p.spec?.hostNetwork
        && !p.metadata?.deletionTimestamp
        && (p.status?.phase === 'Running' || p.status?.phase === 'Pending'));
      if (!runs) throw new IdentityNotAllowedError(who.node, spiffeId);
    },
    ready: () => apiOk,
    async close() { /* nothing held open */ },
  };
}

/**
 * Root files in a Secret. Writes are guarded by resourceVersion, so two CA replicas (or a rotation
 * racing the CA) cannot silently overwrite each other.
 */
export class SecretRootStore implements RootStore {
  readonly where: string;
  readonly #api: KubeApi;
  readonly #namespace: string;
  readonly #name: string;
  #resourceVersion: string | undefined;

  constructor(kubeConfig: KubeConfig, namespace: string, name: string) {
    this.#api = kubeApi(kubeConfig);
    this.#namespace = namespace;
    this.#name = name;
    this.where = `secret ${namespace}/${name}`;
  }

  async read(): Promise<RootFiles | undefined> {
    try {
      const secret = await this.#api.get<V1Secret>(apiPath(CORE.secrets, { namespace: this.#namespace, name: this.#name }));
      this.#resourceVersion = secret.metadata?.resourceVersion;
      const files: RootFiles = {};
      for (const [k, v] of Object.entries(secret.data ?? {})) files[k] = Buffer.from(v, 'base64').toString('utf8');
      return files;
    } catch (err) {
      if (apiStatus(err) === 404) return undefined;
      throw new CaError(`cannot read ${this.where}: ${(err as Error).message}`);
    }
  }

  async create(files: RootFiles): Promise<boolean> {
    try {
      await this.#api.send('POST', apiPath(CORE.secrets, { namespace: this.#namespace }), { apiVersion: 'v1', kind: 'Secret', type: 'Opaque', metadata: { name: this.#name, namespace: this.#namespace, labels: { 'app.kubernetes.io/part-of': 'meshlet' } }, data: encode(files) });
      return true;
    } catch (err) {
      if (apiStatus(err) === 409) return false;
      throw new CaError(`cannot create ${this.where}: ${(err as Error).message}`);
    }
  }

  async replace(files: RootFiles): Promise<void> {
    if (this.#resourceVersion === undefined) await this.read();
    try {
      await this.#api.send('PUT', apiPath(CORE.secrets, { namespace: this.#namespace, name: this.#name }),
        { apiVersion: 'v1', kind: 'Secret', type: 'Opaque', metadata: { name: this.#name, namespace: this.#namespace, resourceVersion: this.#resourceVersion, labels: { 'app.kubernetes.io/part-of': 'meshlet' } }, data: encode(files) });
    } catch (err) {
      if (apiStatus(err) === 409) throw new CaError(`${this.where} changed while it was being rotated; read it again and retry`);
      throw new CaError(`cannot write ${this.where}: ${(err as Error).message}`);
    }
  }
}

function encode(files: RootFiles): Record<string, string> {
  const data: Record<string, string> = {};
  for (const [k, v] of Object.entries(files)) if (v !== undefined) data[k] = Buffer.from(v).toString('base64');
  return data;
}

export const BUNDLE_KEY = 'trust-bundle.pem';

/** Publishes the trust bundle (never a key) in a ConfigMap agents mount; creates or updates it. */
export function bundlePublisher(kubeConfig: KubeConfig, namespace: string, name: string, log: Logger): (roots: RootSet) => Promise<void> {
  const api = kubeApi(kubeConfig);
  return async (roots) => {
    const body = {
      apiVersion: 'v1', kind: 'ConfigMap',
      metadata: { name, namespace, labels: { 'app.kubernetes.io/part-of': 'meshlet' }, annotations: { 'meshlet.dev/signing-root': roots.signingFingerprint } },
      data: { [BUNDLE_KEY]: roots.trustBundlePem },
    };
    try {
      const existing = await api.get<V1ConfigMap>(apiPath(CORE.configMaps, { namespace, name })).catch((err: unknown) => {
        if (apiStatus(err) === 404) return undefined;
        throw err;
      });
      if (!existing) await api.send('POST', apiPath(CORE.configMaps, { namespace }), body);
      else if (existing.data?.[BUNDLE_KEY] !== roots.trustBundlePem) {
        await api.send('PUT', apiPath(CORE.configMaps, { namespace, name }), { ...body, metadata: { ...body.metadata, resourceVersion: existing.metadata?.resourceVersion } });
      } else return;
      log.info({ configMap: `${namespace}/${name}`, signingRoot: roots.signingFingerprint }, 'trust bundle published');
    } catch (err) {
      // The CA keeps signing (agents also learn the bundle from its answers) and retries on its next reload.
      throw new CaError(`cannot publish the trust bundle to configmap ${namespace}/${name}: ${(err as Error).message}`);
    }
  };
}
