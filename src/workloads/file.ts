// The workloads file: the registry as YAML, for local mode, the demo and tests.
//
//   trustDomain: cluster.local
//   nodes:      [{ name: node-a, ip: 172.30.0.1 }]
//   workloads:  [{ name: web-1, namespace: shop, serviceAccount: web, ip: 10.77.1.10, node: node-a, captured: true,
//                  labels: { app: web }, workload: web, ipv6: 'fd00:77:1::10' }]   # labels, workload and ipv6 are optional
//   namespaces: [{ name: shop, mtls: strict }]                      # optional; default permissive
//   policies:   [{ name: db-clients, namespace: shop, selector: ..., action: ALLOW, rules: [...] }]   # optional; MeshPolicy specs
//   services:   [{ name: api, namespace: shop, clusterIP: 10.96.0.10, ports: [{ name: http, port: 80, targetPort: http }],
//                  selector: { app: api } }]                         # optional; or endpoints: [workload name | IP]
//                                                                     # clusterIP: None is headless; trafficDistribution: PreferClose
// A workload may list its container ports (`ports: [{ name: http, port: 8080 }]`) for named targetPorts.
import { isIPv4, isIPv6 } from 'node:net';
import { parse } from 'yaml';
import { WorkloadSourceError } from '../errors.ts';
import { assertTrustDomain } from '../identity/spiffe.ts';
import type { MeshNode, MeshPolicyObject, MeshService, MeshSnapshot, MtlsMode, ServiceEndpoint, ServicePort, Workload } from './model.ts';
import { schemaProblems } from '../policy/schema.ts';
import { readPolicySpec } from '../policy/spec.ts';
import { isRecord, mappings, unknownKeys } from '../validate.ts';
import { workloadSpiffeId } from './model.ts';
import type { WorkloadSource } from './source.ts';
import { type WatchedFile, watchTextFile } from '../watched-file.ts';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const TOP_LEVEL_KEYS = new Set(['trustDomain', 'nodes', 'workloads', 'namespaces', 'policies', 'services']);
const SERVICE_KEYS = new Set(['name', 'namespace', 'clusterIP', 'ports', 'selector', 'endpoints', 'trafficDistribution']);
const SERVICE_PORT_KEYS = new Set(['name', 'port', 'targetPort']);
const CONTAINER_PORT_KEYS = new Set(['name', 'port']);
/** Kubernetes' IANA_SVC_NAME: what a named port may be called. */
const PORT_NAME = /^(?=.{1,15}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const NAMESPACE_KEYS = new Set(['name', 'mtls']);
const POLICY_KEYS = new Set(['name', 'namespace', 'selector', 'action', 'rules']);
const NODE_KEYS = new Set(['name', 'ip']);
const WORKLOAD_KEYS = new Set(['name', 'namespace', 'serviceAccount', 'ip', 'ipv6', 'node', 'captured', 'labels', 'workload', 'ports']);

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
    // yaml's message ends in "at line L, column C:" and an excerpt on the lines after: say where, then why.
    const e = err as Error & { linePos?: Array<{ line: number; col: number }> };
    const reason = (e.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, '');
    const at = e.linePos?.[0] ? ` at line ${e.linePos[0].line}, column ${e.linePos[0].col}` : '';
    throw new WorkloadSourceError([`not valid YAML${at}: ${reason}`]);
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
  /** Container ports by name, per workload (namespace/name): what named targetPorts resolve to. */
  const namedPorts = new Map<string, Map<string, number>>();
  const seenIps = new Map<string, string>();
  const seenNames = new Set<string>();
  for (const [raw, where] of mappings(doc.workloads, 'workloads', problems, true)) {
    unknownKeys(raw, WORKLOAD_KEYS, where, problems);
    const name = str(raw, 'name', where, problems);
    const namespace = str(raw, 'namespace', where, problems);
    const serviceAccount = str(raw, 'serviceAccount', where, problems);
    const ip = str(raw, 'ip', where, problems);
    const ipv6 = raw.ipv6 === undefined ? undefined : str(raw, 'ipv6', where, problems);
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
    if (ipv6 && !isIPv6(ipv6)) problems.push(`${where}.ipv6: ${JSON.stringify(ipv6)} is not an IPv6 address`);
    if (ipv6 && seenIps.has(ipv6)) problems.push(`${where}.ipv6: ${ipv6} is already used by ${seenIps.get(ipv6)}`);
    if (node && nodes.length > 0 && !nodes.some((n) => n.name === node)) problems.push(`${where}.node: unknown node ${JSON.stringify(node)}`);
    if (typeof captured !== 'boolean') problems.push(`${where}.captured: must be true or false`);
    const key = `${namespace}/${name}`;
    const ports = new Map<string, number>();
    for (const [rawPort, at] of mappings(raw.ports, `${where}.ports`, problems)) {
      unknownKeys(rawPort, CONTAINER_PORT_KEYS, at, problems);
      const portName = str(rawPort, 'name', at, problems);
      if (portName && !PORT_NAME.test(portName)) problems.push(`${at}.name: ${JSON.stringify(portName)} is not a port name (IANA_SVC_NAME)`);
      if (!isPort(rawPort.port)) problems.push(`${at}.port: must be a port number (1-65535)`);
      if (ports.has(portName)) problems.push(`${at}.name: duplicate port name ${portName}`);
      ports.set(portName, rawPort.port as number);
    }
    namedPorts.set(key, ports);
    if (name && namespace && seenNames.has(key)) problems.push(`${where}: duplicate workload ${key}`);
    seenNames.add(key);
    if (ip) seenIps.set(ip, key);
    if (ipv6) seenIps.set(ipv6, key);
    if (problems.length === 0) {
      workloads.push({
        name, namespace, serviceAccount, ip, ...(ipv6 ? { ipv6 } : {}), node, captured: captured as boolean,
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
    // The shape first (the CRD's schema), then what only a reader sees: one list, never both about one field.
    const shape = schemaProblems(spec, where);
    problems.push(...(shape.length > 0 ? shape : readPolicySpec(spec, where).problems));
    if (policies.some((p) => p.name === name && p.namespace === namespace)) problems.push(`${where}: duplicate policy ${namespace}/${name}`);
    policies.push({ name, namespace, spec });
  }
  const services = readServices(doc.services, workloads, namedPorts, problems);
  if (problems.length > 0) throw new WorkloadSourceError(problems);
  return { trustDomain, nodes, workloads, policies, mtls, services };
}

function isPort(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;
}

/**
 * The `services` section, with each endpoint's target ports resolved the way kube-proxy and the
 * EndpointSlice controller do: a numeric targetPort as is, a named one through the endpoint's
 * container ports (an endpoint without that port does not serve that Service port).
 */
function readServices(raw: unknown, workloads: readonly Workload[], namedPorts: ReadonlyMap<string, ReadonlyMap<string, number>>, problems: string[]): MeshService[] {
  const services: MeshService[] = [];
  const clusterIps = new Map<string, string>();
  for (const [svc, where] of mappings(raw, 'services', problems)) {
    unknownKeys(svc, SERVICE_KEYS, where, problems);
    const name = str(svc, 'name', where, problems);
    const namespace = str(svc, 'namespace', where, problems);
    if (name && !DNS_LABEL.test(name)) problems.push(`${where}.name: ${JSON.stringify(name)} is not a DNS label`);
    if (namespace && !DNS_LABEL.test(namespace)) problems.push(`${where}.namespace: ${JSON.stringify(namespace)} is not a DNS label`);
    const key = `${namespace}/${name}`;
    if (services.some((s) => `${s.namespace}/${s.name}` === key)) problems.push(`${where}: duplicate service ${key}`);
    const clusterIP = str(svc, 'clusterIP', where, problems);
    if (clusterIP && clusterIP !== 'None' && !isIPv4(clusterIP)) problems.push(`${where}.clusterIP: ${JSON.stringify(clusterIP)} is neither an IPv4 address nor None`);
    if (clusterIP && clusterIP !== 'None' && clusterIps.has(clusterIP)) problems.push(`${where}.clusterIP: ${clusterIP} is already ${clusterIps.get(clusterIP)}'s`);
    if (clusterIP !== 'None') clusterIps.set(clusterIP, key);
    if (svc.trafficDistribution !== undefined && svc.trafficDistribution !== 'PreferClose') problems.push(`${where}.trafficDistribution: only PreferClose is supported`);

    const ports: Array<ServicePort & { targetPort: number | string }> = [];
    const portList = mappings(svc.ports, `${where}.ports`, problems, true);
    if (Array.isArray(svc.ports) && svc.ports.length === 0) problems.push(`${where}.ports: at least one port`);
    for (const [p, at] of portList) {
      unknownKeys(p, SERVICE_PORT_KEYS, at, problems);
      const portName = p.name ?? '';
      if (typeof portName !== 'string' || (portName !== '' && !PORT_NAME.test(portName))) problems.push(`${at}.name: ${JSON.stringify(portName)} is not a port name (IANA_SVC_NAME)`);
      if (portList.length > 1 && portName === '') problems.push(`${at}.name: required when a service has several ports`);
      if (!isPort(p.port)) problems.push(`${at}.port: must be a port number (1-65535)`);
      const targetPort = p.targetPort ?? p.port;
      if (!isPort(targetPort) && !(typeof targetPort === 'string' && PORT_NAME.test(targetPort))) problems.push(`${at}.targetPort: must be a port number or a port name`);
      if (ports.some((x) => x.name === portName)) problems.push(`${at}.name: duplicate port name ${JSON.stringify(portName)}`);
      if (ports.some((x) => x.port === p.port)) problems.push(`${at}.port: duplicate port ${String(p.port)}`);
      ports.push({ name: String(portName), port: p.port as number, targetPort: targetPort as number | string });
    }

    const selector = svc.selector;
    const listed = svc.endpoints;
    if (selector !== undefined && listed !== undefined) problems.push(`${where}: selector and endpoints exclude each other (endpoints are for services without a selector)`);
    const backends: Array<{ ip: string; workload?: Workload }> = [];
    if (selector !== undefined) {
      if (!isRecord(selector) || Object.values(selector).some((v) => typeof v !== 'string')) {
        problems.push(`${where}.selector: must map label names to strings`);
      } else {
        // As in Kubernetes, an empty selector selects nothing (it is not "every pod").
        const wanted = Object.entries(selector as Record<string, string>);
        if (wanted.length > 0) {
          for (const w of workloads) {
            if (w.namespace === namespace && wanted.every(([k, v]) => w.labels[k] === v)) backends.push({ ip: w.ip, workload: w });
          }
        }
      }
    } else if (listed !== undefined) {
      if (!Array.isArray(listed) || listed.some((e) => typeof e !== 'string')) {
        problems.push(`${where}.endpoints: must be a list of workload names (in the service's namespace) or IP addresses`);
      } else {
        for (const [i, e] of (listed as string[]).entries()) {
          const w = workloads.find((x) => x.namespace === namespace && x.name === e);
          if (w) backends.push({ ip: w.ip, workload: w });
          else if (isIPv4(e)) backends.push({ ip: e, workload: workloads.find((x) => x.ip === e) });
          else problems.push(`${where}.endpoints[${i}]: ${JSON.stringify(e)} is neither a workload of ${namespace} nor an IPv4 address`);
        }
      }
    }
    const endpoints: ServiceEndpoint[] = backends.map(({ ip, workload }) => {
      const resolved: Record<string, number> = {};
      for (const p of ports) {
        const target = typeof p.targetPort === 'number' ? p.targetPort
          : workload ? namedPorts.get(`${workload.namespace}/${workload.name}`)?.get(p.targetPort) : undefined;
        if (target !== undefined) resolved[p.name] = target;
      }
      return { ip, ...(workload ? { node: workload.node } : {}), ready: true, ports: resolved };
    });
    services.push({
      name, namespace, ...(clusterIP && clusterIP !== 'None' ? { clusterIP } : {}),
      ports: ports.map(({ name: n, port }) => ({ name: n, port })), endpoints, preferClose: svc.trafficDistribution === 'PreferClose',
    });
  }
  return services;
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
