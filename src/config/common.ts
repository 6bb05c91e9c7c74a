// What several commands share: log levels, malloc trimming, start-up pages, and where the workloads come from (file or API).
import type { Flag, FlagValues, Problems } from './flags.ts';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** The trust domain of a mesh that names none (Kubernetes mode, and a CA's first root). */
export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

/** A lower-case DNS name: trust domains, namespaces and Kubernetes object names. */
export const DNS_NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;

export const LOG_LEVEL_FLAG = {
  name: 'log-level', type: 'one-of', values: LOG_LEVELS, default: 'info', env: ['MESHLET_LOG_LEVEL'], help: 'log level (changed at run time through the admin API)',
} as const satisfies Flag;

/** How often free malloc memory goes back to the kernel (malloc-tuning.ts); 0: never. */
export const MALLOC_TRIM_FLAG = {
  name: 'malloc-trim', type: 'duration', min: 0, max: 3_600_000, default: '10s', help: 'how often free malloc memory is handed back to the kernel; 0s: never',
} as const satisfies Flag;

/** Resident memory to stay under (memory-target.ts); 0: none. The manifests pass the container's limit. */
export const MEMORY_TARGET_FLAG = {
  name: 'memory-target', type: 'int', arg: 'MIB', min: 0, max: 1_048_576, default: '0', env: ['MESHLET_MEMORY_TARGET'],
  help: 'resident memory to stay under: near it, fewer CPU-saving reserves (heap headroom, malloc\'s free memory); 0: none (the manifests pass the container\'s limit, README)',
} as const satisfies Flag;

/** Whether the Node binary's start-up pages go back to the kernel once the process is up (startup-pages.ts). */
export const RELEASE_STARTUP_PAGES_FLAG = {
  name: 'release-startup-pages', type: 'on-off', default: 'on', help: 'once up, hand back the pages of the Node binary start-up touched (those still used fault back in)',
} as const satisfies Flag;

/** Where the registry comes from: the workloads file (local mode) or the Kubernetes API. */
export type WorkloadsConfig =
  | { kind: 'file'; path: string; pollMs: number }
  | { kind: 'kubernetes'; kubeconfig: string | undefined; trustDomain: string; remoteFromSlices?: { node: string; namespace: string; podRanges?: string[] } };

export const WORKLOADS_FLAGS = [
  { name: 'workloads', type: 'text', arg: 'FILE', help: 'workloads YAML (trustDomain, nodes, workloads, services, policies), reloaded on change' },
  { name: 'workloads-poll', type: 'duration', min: 50, max: 60_000, default: '500ms', help: 'how often the workloads file is checked' },
  { name: 'kubernetes', type: 'boolean', help: 'workloads from the Kubernetes API (in-cluster config)' },
  { name: 'kubeconfig', type: 'text', arg: 'PATH', help: '... from the cluster this kubeconfig names (implies --kubernetes)' },
  { name: 'trust-domain', type: 'text', arg: 'TD', pattern: DNS_NAME, patternHelp: 'a trust domain (lower-case DNS name)', help: `with --kubernetes: the mesh's trust domain [${DEFAULT_TRUST_DOMAIN}]` },
] as const satisfies readonly Flag[];

export function workloadsConfig(v: FlagValues<typeof WORKLOADS_FLAGS>, p: Problems): WorkloadsConfig {
  if (v.kubernetes || v.kubeconfig) {
    if (v.workloads) p.add('--workloads (file) and --kubernetes/--kubeconfig (API) exclude each other');
    return { kind: 'kubernetes', kubeconfig: v.kubeconfig, trustDomain: v['trust-domain'] ?? DEFAULT_TRUST_DOMAIN };
  }
  if (v['trust-domain']) p.add('--trust-domain only applies with --kubernetes (the workloads file names its own)');
  return { kind: 'file', path: p.required('workloads (or --kubernetes)', v.workloads), pollMs: v['workloads-poll'] };
}

/** Keys for roots and workloads: ECDSA P-256 (the default: cheaper handshakes and keys) or RSA-2048. */
export const KEY_ALGORITHMS = ['ecdsa-p256', 'rsa-2048'] as const;
export type KeyAlgorithm = (typeof KEY_ALGORITHMS)[number];
