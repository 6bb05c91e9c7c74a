// `meshlet ca init | serve | rotate`: their flag tables and configurations.
import { isIP } from 'node:net';
import { PORTS } from '../ports.ts';
import { CERT_TTL } from './agent.ts';
import { DEFAULT_TRUST_DOMAIN, DNS_NAME, KEY_ALGORITHMS, type KeyAlgorithm, LOG_LEVEL_FLAG, type LogLevel, MALLOC_TRIM_FLAG, MEMORY_TARGET_FLAG, RELEASE_STARTUP_PAGES_FLAG } from './common.ts';
import { type Flag, type FlagValues, type Problems, readFlags } from './flags.ts';

/** Where the CA keeps its root and how it authorizes: files (local) or the Kubernetes API. */
export type CaBackend =
  | { kind: 'local'; caDir: string; tokensFile: string; workloadsFile: string }
  | { kind: 'kubernetes'; kubeconfig: string | undefined; namespace: string; agentServiceAccount: string; rootSecret: string; bundleConfigMap: string };

export interface CaServeConfig {
  backend: CaBackend;
  trustDomain: string;
  listenAddress: string;
  port: number;
  certTtlMs: number;
  maxBodyBytes: number;
  ratePerSecond: number;
  burst: number;
  servingNames: string[];
  reloadMs: number;
  mallocTrimMs: number;
  /** Resident memory to stay under (memory-target.ts); 0: none. */
  memoryTargetMiB: number;
  releaseStartupPages: boolean;
  /** With the Kubernetes backend: publish the address table as MeshAddressSlices (addresses/). */
  addressSlices: boolean;
  logLevel: LogLevel;
  /** Prometheus /metrics on their own port (off: no registry, no listener). */
  metrics: { port: number; address: string } | undefined;
}

const OBJECT_NAME = { type: 'text', arg: 'NAME', pattern: DNS_NAME, patternHelp: 'a Kubernetes object name' } as const;
const TRUST_DOMAIN = { name: 'trust-domain', type: 'text', arg: 'TD', pattern: DNS_NAME, patternHelp: 'a trust domain (lower-case DNS name)', default: DEFAULT_TRUST_DOMAIN } as const;

const BACKEND_FLAGS = [
  { name: 'ca-dir', type: 'text', arg: 'DIR', help: 'root store (ca.key, ca.crt, trust-bundle.pem, next.*), re-read every --reload' },
  { name: 'kubernetes', type: 'boolean', help: 'root in a Secret, bundle in a ConfigMap, TokenReview and pods for authorization' },
  { name: 'kubeconfig', type: 'text', arg: 'PATH', help: 'with --kubernetes: the cluster this kubeconfig names [in-cluster]' },
  { name: 'namespace', ...OBJECT_NAME, arg: 'NS', default: 'meshlet-system', help: 'with --kubernetes: where the agents, the Secret and the ConfigMap live' },
  { name: 'agent-service-account', ...OBJECT_NAME, arg: 'SA', default: 'meshlet-agent', help: 'the agents\' service account (TokenReview)' },
  { name: 'root-secret', ...OBJECT_NAME, default: 'meshlet-ca-root', help: 'the Secret holding the root' },
  { name: 'bundle-configmap', ...OBJECT_NAME, default: 'meshlet-trust-bundle', help: 'the ConfigMap the trust bundle is published in' },
] as const satisfies readonly Flag[];

export const CA_SERVE_FLAGS = [
  ...BACKEND_FLAGS,
  { ...TRUST_DOMAIN, help: 'trust domain of a root created on first start' },
  { name: 'listen-address', type: 'ip', default: '0.0.0.0', help: 'where the CA listens' },
  { name: 'port', type: 'port', default: String(PORTS.ca), help: 'the CA\'s port' },
  { name: 'tokens', type: 'text', arg: 'FILE', help: 'YAML: tokens: [{ node, token }] (local authorization)' },
  { name: 'workloads', type: 'text', arg: 'FILE', help: 'which pods run on which node (the agents\' workloads file)' },
  { name: 'cert-ttl', ...CERT_TTL, help: 'lifetime of issued certificates' },
  { name: 'max-body', type: 'int', arg: 'BYTES', min: 1024, max: 1_048_576, default: '16384', help: 'largest request body' },
  // Per client address: a node with 200 pods gets all its certificates at cold start in one burst.
  { name: 'rate', type: 'int', min: 1, max: 100_000, default: '50', help: 'requests a second per client address' },
  { name: 'burst', type: 'int', min: 1, max: 100_000, default: '200', help: '... in a burst' },
  // The names agents use in a cluster (Service meshlet-ca in meshlet-system), and loopback.
  { name: 'san', type: 'list', arg: 'NAME[,NAME]', help: 'serving certificate names and IPs [meshlet-ca,meshlet-ca.meshlet-system,meshlet-ca.meshlet-system.svc,localhost,127.0.0.1]' },
  { name: 'reload', type: 'duration', min: 100, max: 3_600_000, default: '10s', help: 'how often the root store is re-read' },
  { name: 'metrics', type: 'on-off', default: 'on', help: 'Prometheus metrics: requests by outcome and duration, the roots\' expiry' },
  { name: 'metrics-port', type: 'port', default: String(PORTS.caMetrics), help: '/metrics' },
  { name: 'metrics-address', type: 'ip', default: '0.0.0.0', help: 'where /metrics listens' },
  { name: 'address-slices', type: 'on-off', default: 'off', help: 'with --kubernetes: publish the mesh\'s pods as MeshAddressSlices (one writer among the replicas, by Lease)' },
  MALLOC_TRIM_FLAG,
  MEMORY_TARGET_FLAG,
  RELEASE_STARTUP_PAGES_FLAG,
  LOG_LEVEL_FLAG,
] as const satisfies readonly Flag[];

const DEFAULT_SANS = 'meshlet-ca,meshlet-ca.meshlet-system,meshlet-ca.meshlet-system.svc,localhost,127.0.0.1';

/** --ca-dir (files) or --kubernetes (Secret, ConfigMap, TokenReview); `serve` also needs the local authorizer's files. */
function caBackend(v: FlagValues<typeof BACKEND_FLAGS> & { tokens?: string | undefined; workloads?: string | undefined }, p: Problems, serve: boolean): CaBackend {
  if (v.kubernetes) {
    for (const flag of ['ca-dir', 'tokens', 'workloads'] as const) if (v[flag]) p.add(`--${flag} does not apply with --kubernetes`);
    return {
      kind: 'kubernetes', kubeconfig: v.kubeconfig, namespace: v.namespace,
      agentServiceAccount: v['agent-service-account'], rootSecret: v['root-secret'], bundleConfigMap: v['bundle-configmap'],
    };
  }
  if (v.kubeconfig) p.add('--kubeconfig only applies with --kubernetes');
  return {
    kind: 'local',
    caDir: p.required('ca-dir (or --kubernetes)', v['ca-dir']),
    tokensFile: serve ? p.required('tokens', v.tokens) : '',
    workloadsFile: serve ? p.required('workloads', v.workloads) : '',
  };
}

export function loadCaServeConfig(argv: string[], env: NodeJS.ProcessEnv): CaServeConfig {
  const { values: v, problems: p } = readFlags(CA_SERVE_FLAGS, argv, env);
  const servingNames = (v.san.length > 0 ? v.san : [DEFAULT_SANS]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
  for (const n of servingNames) {
    if (!isIP(n) && !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/i.test(n)) p.add(`--san: ${JSON.stringify(n)} is neither a DNS name nor an IP address`);
  }
  const config: CaServeConfig = {
    backend: caBackend(v, p, true),
    trustDomain: v['trust-domain'],
    listenAddress: v['listen-address'],
    port: v.port,
    certTtlMs: v['cert-ttl'],
    maxBodyBytes: v['max-body'],
    ratePerSecond: v.rate,
    burst: v.burst,
    servingNames,
    reloadMs: v.reload,
    mallocTrimMs: v['malloc-trim'],
    memoryTargetMiB: v['memory-target'],
    releaseStartupPages: v['release-startup-pages'],
    addressSlices: v['address-slices'],
    logLevel: v['log-level'],
    metrics: v.metrics ? { port: v['metrics-port'], address: v['metrics-address'] } : undefined,
  };
  if (config.metrics && config.metrics.port === config.port) p.add(`--metrics-port ${config.port} is already --port's`);
  if (config.addressSlices && config.backend.kind !== 'kubernetes') p.add('--address-slices only applies with --kubernetes');
  p.throwIfAny();
  return config;
}

/** The root's key: ECDSA P-256 by default, RSA-2048 for verifiers that need it. */
const KEY_ALGORITHM = { name: 'key-algorithm', type: 'one-of', values: KEY_ALGORITHMS } as const;

export const CA_ROTATE_FLAGS = [
  ...BACKEND_FLAGS,
  { ...KEY_ALGORITHM, help: 'with prepare: the new root\'s key (default: the current root\'s; a rotation moves a mesh from one to the other)' },
] as const satisfies readonly Flag[];

/** `meshlet ca rotate STEP`: which store to rotate. */
export function loadCaRotateConfig(argv: string[]): { step: 'prepare' | 'activate' | 'finish'; backend: CaBackend; keyAlgorithm?: KeyAlgorithm } {
  const { values: v, positionals, problems: p } = readFlags(CA_ROTATE_FLAGS, argv, {}, { positionals: true });
  const step = positionals[0] ?? '';
  if (positionals.length !== 1 || !['prepare', 'activate', 'finish'].includes(step)) {
    p.add('usage: meshlet ca rotate prepare|activate|finish (--ca-dir DIR | --kubernetes)');
  }
  const backend = caBackend(v, p, false);
  if (v['key-algorithm'] && step !== 'prepare') p.add('--key-algorithm: only `prepare` makes a root');
  p.throwIfAny();
  return { step: step as 'prepare' | 'activate' | 'finish', backend, ...(v['key-algorithm'] ? { keyAlgorithm: v['key-algorithm'] } : {}) };
}

export const CA_INIT_FLAGS = [
  { name: 'out', type: 'text', arg: 'DIR', help: 'where the root is written (created; an existing root is never overwritten)' },
  { ...TRUST_DOMAIN, help: 'the root\'s trust domain' },
  { ...KEY_ALGORITHM, default: 'ecdsa-p256', help: 'the root\'s key' },
] as const satisfies readonly Flag[];

/** `meshlet ca init`: where to write a new root, for which trust domain. */
export function loadCaInitConfig(argv: string[]): { out: string; trustDomain: string; keyAlgorithm: KeyAlgorithm } {
  const { values: v, problems: p } = readFlags(CA_INIT_FLAGS, argv);
  const out = p.required('out', v.out);
  p.throwIfAny();
  return { out, trustDomain: v['trust-domain'], keyAlgorithm: v['key-algorithm'] };
}
