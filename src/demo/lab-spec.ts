// What a MeshLab is made of (its spec) and what it hands back (its agents, its clients' reports).
import type { ChildProcess } from 'node:child_process';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NodeNs, PodNs } from '../netns/topology.ts';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
export const CLI = join(ROOT, 'src/main.js');
/**
 * Node flags agents run with, as the image runs them (Dockerfile, NODE_OPTIONS) and bin/meshlet: a
 * young generation of 1 MiB semi-spaces instead of 16 keeps tens of MiB of RSS off a loaded agent
 * for no measurable CPU; the tunnel's per-chunk buffers die with the young objects that hold them,
 * so the smaller it is, the sooner they are freed (bench/README.md, "Agent memory", "A memory
 * target"). AGENT_NODE_ARGS adds more to a bench's agents (e.g. `--cpu-prof --cpu-prof-dir=DIR`).
 */
export const AGENT_NODE_FLAGS = ['--max-semi-space-size=1', ...(process.env.AGENT_NODE_ARGS ?? '').split(' ').filter(Boolean)];

/** What a lab runs meshlet as: `meshlet init` in a node, a node's agent, the CA service. */
export type MeshletRole = 'init' | 'agent' | 'ca';

/**
 * How a lab runs meshlet: as processes of this checkout (processRunner), or from the built image in
 * containers (test/support/image.ts). The command is spawned inside the role's namespace.
 */
export interface MeshletRunner {
  command(role: MeshletRole, args: string[], labDir: string): { cmd: string; args: string[] };
}

export const processRunner: MeshletRunner = {
  command: (role, args) => ({ cmd: process.execPath, args: [...(role === 'agent' ? AGENT_NODE_FLAGS : []), CLI, ...args] }),
};

export interface PodSpec {
  name: string;
  namespace?: string;
  serviceAccount?: string;
  /** Whether the agent captures it (default true). */
  captured?: boolean;
  /** Whether the workloads file lists it at all (default true). */
  registered?: boolean;
  /** Its labels (default { app: name }): what MeshPolicy and Service selectors match. */
  labels?: Record<string, string>;
  /** Named container ports (for Services' named targetPorts). */
  ports?: Array<{ name: string; port: number }>;
}

export interface LabSpec {
  trustDomain?: string;
  /** `bridge`: the node's pods share a bridge (topology.ts), as with the bridge CNI. */
  nodes: Array<{ name: string; pods: PodSpec[]; bridge?: boolean }>;
  certTtl?: string;
  /**
   * Data-plane workers of each node agent (--workers; default 2: every suite and the demo run the
   * threads, as a node of 8 cores would by default), all serving from the start unless
   * `minWorkers` says fewer (--min-workers: the others start under load). Sidecars run one.
   */
  workers?: number;
  minWorkers?: number;
  /** The root's and the agents' keys (their defaults: ECDSA P-256). */
  keyAlgorithm?: 'ecdsa-p256' | 'rsa-2048';
  agentArgs?: string[];
  /**
   * Where agents get certificates: 'local' (default) embeds the CA in each agent (--ca-dir);
   * 'service' runs `meshlet ca serve` in a namespace of its own and agents use --ca-url.
   */
  identity?: 'local' | 'service';
  /** With identity 'service': how often agents fetch the trust bundle. */
  bundlePoll?: string;
  caArgs?: string[];
  /** A namespace of its own on the underlay for a Kubernetes API stand-in (tests feed agents from it). */
  apiNode?: boolean;
  /** The workloads file's `services` (name, namespace, clusterIP, ports, selector or endpoints). */
  services?: object[];
  /** Capture with nftables instead of iptables (init and agents). */
  captureBackend?: 'iptables' | 'nftables';
  /** Nodes and pods get IPv6 addresses too; the workloads file lists each pod's (`ipv6`). */
  dualStack?: boolean;
  /** How init, agents and the CA run (default: processes of this checkout). */
  runner?: MeshletRunner;
}

export interface AgentProcess {
  node: NodeNs;
  /** Sidecar mode: the pod this agent runs in and serves alone. */
  pod?: PodNs;
  child: ChildProcess;
  logFile: string;
  exited: Promise<number | null>;
}

export interface ClientReport {
  ok: boolean;
  results: Array<{ ok: boolean; sent: number; received: number; sentSha: string; receivedSha: string; ms: number; error?: string; reply?: string }>;
}

/** The workloads file a lab writes: its nodes, and its pods that the file lists. */
export function workloadsDocument(trustDomain: string, nodes: NodeNs[], pods: Array<PodNs & { spec: PodSpec }>, services?: object[]): object {
  return {
    trustDomain,
    nodes: nodes.map((n) => ({ name: n.name, ip: n.ip })),
    workloads: pods.filter((p) => p.spec.registered !== false).map((p) => ({
      name: p.name,
      namespace: p.spec.namespace ?? 'default',
      serviceAccount: p.spec.serviceAccount ?? p.name,
      ip: p.ip,
      ...(p.ip6 ? { ipv6: p.ip6 } : {}),
      node: p.node.name,
      captured: p.spec.captured ?? true,
      labels: p.spec.labels ?? { app: p.name },
      ...(p.spec.ports ? { ports: p.spec.ports } : {}),
    })),
    ...(services ? { services } : {}),
  };
}
