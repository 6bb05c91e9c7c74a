// The workloads file: the registry as YAML, for local mode, the demo and tests.
//
//   trustDomain: cluster.local
//   nodes:      [{ name: node-a, ip: 172.30.0.1 }]
//   workloads:  [{ name: web-1, namespace: shop, serviceAccount: web, ip: 10.77.1.10, node: node-a, captured: true,
//                  labels: { app: web }, workload: web }]                      # labels and workload are optional
//   namespaces: [{ name: shop, mtls: strict }]                      # optional; default permissive
//   policies:   [{ name: db-clients, namespace: shop, selector: ..., action: ALLOW, rules: [...] }]   # optional; MeshPolicy specs
import { isIPv4, isIPv6 } from 'node:net';
import { parse } from 'yaml';
import { WorkloadSourceError } from '../errors.ts';
import { assertTrustDomain } from '../identity/spiffe.ts';
import type { MeshNode, MeshPolicyObject, MeshSnapshot, MtlsMode, Workload } from './model.ts';
import { readPolicySpec } from '../policy/spec.ts';
import { isRecord, mappings, unknownKeys } from '../validate.ts';
import { workloadSpiffeId } from './model.ts';
import type { WorkloadSource } from './source.ts';
import { type WatchedFile, watchTextFile } from '../watched-file.ts';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const TOP_LEVEL_KEYS = new Set(['trustDomain', 'nodes', 'workloads', 'namespaces', 'policies']);
const NAMESPACE_KEYS = new Set(['name', 'mtls']);
const POLICY_KEYS = new Set(['name', 'namespace', 'selector', 'action', 'rules']);
const NODE_KEYS = new Set(['name', 'ip']);
const WORKLOAD_KEYS = new Set(['name', 'namespace', 'serviceAccount', 'ip', 'node', 'captured', 'labels', 'workload']);

function str(obj: Record<string, unknown>, key: string, where: string, problems: string[]): string {
  const v = obj[key];
  if (typeof v !== 'string' || v === '') {
    problems.push(`${where}.${key}: required string`);
    return '';
  }
  return v;
}

/** Parses and validates the file's text. Throws WorkloadSourceError listing every problem found. */
export function parseWorkloadsFile(text: string): MeshSnapshot {
  let doc: unknown;
  try {
    doc = parse(text, { maxAliasCount: 100 });
  } catch (err) {
    throw new WorkloadSourceError([`not valid YAML: ${(err as Error).message.split('\n')[0]}`]);
  }
  if (!isRecord(doc)) throw new WorkloadSourceError(['the document must be a mapping with trustDomain, nodes and workloads']);
  const problems: string[] = [];
  unknownKeys(doc, TOP_LEVEL_KEYS, 'file', problems);

  const trustDomain = str(doc, 'trustDomain', 'file', problems);
  if (trustDomain) {
    try {
      assertTrustDomain(trustDomain);
    } catch (err) {
      problems.push(`trustDomain: ${(err as Error).message}`);
    }
  }

  const nodes: MeshNode[] = [];
  for (const [raw, where] of mappings(doc.nodes, 'nodes', problems, true)) {
    unknownKeys(raw, NODE_KEYS, where, problems);
    const name = str(raw, 'name', where, problems);
    const ip = str(raw, 'ip', where, problems);
    if (name && !DNS_SUBDOMAIN.test(name)) problems.push(`${where}.name: ${JSON.stringify(name)} is not a DNS subdomain name`);
    if (ip && !isIPv4(ip) && !isIPv6(ip)) problems.push(`${where}.ip: ${JSON.stringify(ip)} is not an IP address`);
    if (nodes.some((n) => n.name === name)) problems.push(`${where}.name: duplicate node ${name}`);
    nodes.push({ name, ip });
  }

  const workloads: Workload[] = [];
  const seenIps = new Map<string, string>();
  const seenNames = new Set<string>();
  for (const [raw, where] of mappings(doc.workloads, 'workloads', problems, true)) {
    unknownKeys(raw, WORKLOAD_KEYS, where, problems);
    const name = str(raw, 'name', where, problems);
    const namespace = str(raw, 'namespace', where, problems);
    const serviceAccount = str(raw, 'serviceAccount', where, problems);
    const ip = str(raw, 'ip', where, problems);
    const node = str(raw, 'node', where, problems);
    const captured = raw.captured ?? true;
    const labels = raw.labels ?? {};
    const workload = raw.workload ?? name;
    if (typeof workload !== 'string' || !DNS_SUBDOMAIN.test(workload)) problems.push(`${where}.workload: ${JSON.stringify(workload)} is not a DNS subdomain name`);
    if (!isRecord(labels) || Object.values(labels).some((v) => typeof v !== 'string')) problems.push(`${where}.labels: must map label names to strings`);
    if (name && !DNS_SUBDOMAIN.test(name)) problems.push(`${where}.name: ${JSON.stringify(name)} is not a DNS subdomain name`);
    if (namespace && !DNS_LABEL.test(namespace)) problems.push(`${where}.namespace: ${JSON.stringify(namespace)} is not a DNS label`);
    if (serviceAccount && !DNS_SUBDOMAIN.test(serviceAccount)) {
      problems.push(`${where}.serviceAccount: ${JSON.stringify(serviceAccount)} is not a DNS subdomain name`);
    }
    if (ip && !isIPv4(ip)) problems.push(`${where}.ip: ${JSON.stringify(ip)} is not an IPv4 address`);
    if (ip && seenIps.has(ip)) problems.push(`${where}.ip: ${ip} is already used by ${seenIps.get(ip)}`);
    if (node && nodes.length > 0 && !nodes.some((n) => n.name === node)) problems.push(`${where}.node: unknown node ${JSON.stringify(node)}`);
    if (typeof captured !== 'boolean') problems.push(`${where}.captured: must be true or false`);
    const key = `${namespace}/${name}`;
    if (name && namespace && seenNames.has(key)) problems.push(`${where}: duplicate workload ${key}`);
    seenNames.add(key);
    if (ip) seenIps.set(ip, key);
    if (problems.length === 0) {
      workloads.push({
        name, namespace, serviceAccount, ip, node, captured: captured as boolean,
        spiffeId: workloadSpiffeId(trustDomain, namespace, serviceAccount), labels: labels as Record<string, string>, workload: workload as string,
      });
    }
  }

  const mtls: Record<string, MtlsMode> = {};
  for (const [raw, where] of mappings(doc.namespaces, 'namespaces', problems)) {
    unknownKeys(raw, NAMESPACE_KEYS, where, problems);
    const name = str(raw, 'name', where, problems);
    if (raw.mtls !== undefined && raw.mtls !== 'strict' && raw.mtls !== 'permissive') problems.push(`${where}.mtls: must be strict or permissive`);
    else if (name && raw.mtls) mtls[name] = raw.mtls as MtlsMode;
  }

  const policies: MeshPolicyObject[] = [];
  for (const [raw, where] of mappings(doc.policies, 'policies', problems)) {
    unknownKeys(raw, POLICY_KEYS, where, problems);
    const name = str(raw, 'name', where, problems);
    const namespace = str(raw, 'namespace', where, problems);
    const spec: Record<string, unknown> = {};
    for (const k of ['selector', 'action', 'rules']) if (raw[k] !== undefined) spec[k] = raw[k];
    problems.push(...readPolicySpec(spec, where).problems);
    if (policies.some((p) => p.name === name && p.namespace === namespace)) problems.push(`${where}: duplicate policy ${namespace}/${name}`);
    policies.push({ name, namespace, spec });
  }
  if (problems.length > 0) throw new WorkloadSourceError(problems);
  return { trustDomain, nodes, workloads, policies, mtls };
}

export interface FileSourceOptions {
  path: string;
  /** How often the file is polled for changes. Polling survives editors that replace the file. */
  pollIntervalMs?: number;
}

export function createFileSource(opts: FileSourceOptions): WorkloadSource {
  let file: WatchedFile | undefined;
  return {
    async start({ onSnapshot, onError }) {
      file = watchTextFile({
        path: opts.path,
        intervalMs: opts.pollIntervalMs ?? 500,
        parse: parseWorkloadsFile,
        onValue: onSnapshot,
        onError,
        readError: (err) => new WorkloadSourceError([`cannot read ${opts.path}: ${err.message}`]),
      });
      await file.start();
    },
    async close() {
      file?.close();
    },
  };
}
