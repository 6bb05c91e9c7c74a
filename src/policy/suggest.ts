// `meshlet policy suggest`: least-privilege policies from what the agents saw. Reads access lines
// (the agents' logs, scope "access"), keeps the connections that went through as their destination
// agent recorded them (it verified the source's identity), and proposes, per destination identity
// (namespace and service account), one ALLOW policy, or AUDIT to try it first, that admits exactly
// the sources seen on each port: verified principals, and the addresses of plaintext sources.
// Each proposal is compiled as the agents would compile it before it is offered.
import type { MeshSnapshot, Workload } from '../workloads/model.ts';
import { compilePolicy } from './compile.ts';

/** One connection as its destination saw it. */
export interface Observed {
  namespace: string;
  workload: string;
  port: number;
  /** A verified SPIFFE ID, or for a plaintext source its address. */
  source: { principal: string } | { ip: string };
}

export interface Suggestion {
  namespace: string;
  name: string;
  spec: { selector: { matchLabels: Record<string, string> }; action: 'ALLOW' | 'AUDIT'; rules: Array<{ from: Array<{ principals: string[] } | { ipBlocks: string[] }>; to: Array<{ ports: number[] }> }> };
}

/** Labels controllers put on pods that differ between a workload's pods: never part of a selector. */
const VOLATILE_LABELS = new Set(['pod-template-hash', 'controller-revision-hash', 'pod-template-generation', 'statefulset.kubernetes.io/pod-name']);

/** The connections in access lines (JSON, one per line) that a suggestion can learn from, and how many lines it could not use. */
export function observedConnections(text: string): { seen: Observed[]; skipped: number } {
  const seen: Observed[] = [];
  let skipped = 0;
  for (const raw of text.split('\n')) {
    if (!raw.trim()) continue;
    let line: any;
    try { line = JSON.parse(raw); } catch { skipped++; continue; }
    if (line?.scope !== 'access') continue;
    // The destination's record: it decided, on the identity it verified (a same-node connection's one line is both sides').
    if (line.reporter !== 'destination' && line.route !== 'local') continue;
    // Refused, denied or failed connections are not traffic to allow.
    if (line.outcome === 'error') continue;
    const port = Number(/:(\d+)$/.exec(String(line.dst?.addr ?? ''))?.[1]);
    const principal = typeof line.src?.principal === 'string' ? line.src.principal : undefined;
    const ip = typeof line.src?.ip === 'string' ? line.src.ip : undefined;
    if (typeof line.dst?.namespace !== 'string' || typeof line.dst?.workload !== 'string' || !port || (!principal && !ip)) { skipped++; continue; }
    // Access lines name a workload namespace/name.
    const workload = line.dst.workload.startsWith(`${line.dst.namespace}/`) ? line.dst.workload.slice(line.dst.namespace.length + 1) : line.dst.workload;
    seen.push({ namespace: line.dst.namespace, workload, port, source: principal ? { principal } : { ip: ip! } });
  }
  return { seen, skipped };
}

/** Policies admitting exactly what was seen, per destination identity; notes say what could not be proposed and why. */
export function suggestPolicies(seen: readonly Observed[], snapshot: MeshSnapshot, opts: { audit?: boolean } = {}): { policies: Suggestion[]; notes: string[] } {
  const notes: string[] = [];
  const byName = new Map(snapshot.workloads.map((w) => [`${w.namespace}/${w.name}`, w]));
  // Destination identity -> port -> sources.
  const groups = new Map<string, { namespace: string; serviceAccount: string; ports: Map<number, Set<string>> }>();
  for (const o of seen) {
    const w = byName.get(`${o.namespace}/${o.workload}`);
    if (!w) { notes.push(`${o.namespace}/${o.workload}: not in the mesh now; its connections are left out`); continue; }
    const key = `${w.namespace}/${w.serviceAccount}`;
    const g = groups.get(key) ?? { namespace: w.namespace, serviceAccount: w.serviceAccount, ports: new Map() };
    groups.set(key, g);
    const sources = g.ports.get(o.port) ?? new Set<string>();
    g.ports.set(o.port, sources);
    sources.add('principal' in o.source ? `p:${o.source.principal}` : `i:${o.source.ip}`);
  }
  const policies: Suggestion[] = [];
  for (const g of [...groups.values()].sort((a, b) => `${a.namespace}/${a.serviceAccount}`.localeCompare(`${b.namespace}/${b.serviceAccount}`))) {
    const who = `${g.namespace}/${g.serviceAccount}`;
    const selector = commonLabels(snapshot.workloads.filter((w) => w.namespace === g.namespace && w.serviceAccount === g.serviceAccount));
    if (Object.keys(selector).length === 0) { notes.push(`${who}: its pods share no label to select them by; no policy proposed`); continue; }
    // A selector must not reach pods of another identity: their traffic was not what was observed.
    const others = snapshot.workloads.filter((w) => w.namespace === g.namespace && w.serviceAccount !== g.serviceAccount && matches(w, selector));
    if (others.length > 0) { notes.push(`${who}: its pods' labels also select ${others.map((w) => w.name).join(', ')}; no policy proposed`); continue; }
    // Ports that saw the same sources share a rule; a rule never admits a source on a port it was not seen on.
    const rules = new Map<string, { sources: string[]; ports: number[] }>();
    for (const [port, sources] of g.ports) {
      const key = [...sources].sort().join(' ');
      const r = rules.get(key) ?? { sources: [...sources].sort(), ports: [] };
      rules.set(key, r);
      r.ports.push(port);
    }
    const spec: Suggestion['spec'] = {
      selector: { matchLabels: selector },
      action: opts.audit ? 'AUDIT' : 'ALLOW',
      rules: [...rules.values()].map((r) => {
        const principals = r.sources.filter((s) => s.startsWith('p:')).map((s) => s.slice(2));
        const ipBlocks = r.sources.filter((s) => s.startsWith('i:')).map((s) => `${s.slice(2)}/32`);
        const from: Array<{ principals: string[] } | { ipBlocks: string[] }> = [];
        if (principals.length) from.push({ principals });
        if (ipBlocks.length) from.push({ ipBlocks });
        return { from, to: [{ ports: r.ports.sort((a, b) => a - b) }] };
      }).sort((a, b) => a.to[0]!.ports[0]! - b.to[0]!.ports[0]!),
    };
    const suggestion: Suggestion = { namespace: g.namespace, name: `${opts.audit ? 'audit' : 'allow'}-${g.serviceAccount}-observed`, spec };
    const compiled = compilePolicy({ namespace: suggestion.namespace, name: suggestion.name, spec: suggestion.spec as unknown as Record<string, unknown> });
    if (compiled.errors.length > 0) { notes.push(`${who}: the proposal would not compile (${compiled.errors.join('; ')}); not offered`); continue; }
    policies.push(suggestion);
  }
  return { policies, notes: [...new Set(notes)] };
}

function commonLabels(workloads: readonly Workload[]): Record<string, string> {
  const [first, ...rest] = workloads;
  if (!first) return {};
  const common: Record<string, string> = {};
  for (const [k, v] of Object.entries(first.labels)) {
    if (!VOLATILE_LABELS.has(k) && rest.every((w) => w.labels[k] === v)) common[k] = v;
  }
  return common;
}

function matches(w: Workload, selector: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => w.labels[k] === v);
}

/** As MeshPolicy objects (`kubectl apply -f -`), or as a workloads file's `policies:` entries. */
export function formatSuggestions(policies: readonly Suggestion[], format: 'crd' | 'workloads', stringify: (o: unknown) => string): string {
  if (format === 'workloads') return stringify({ policies: policies.map((p) => ({ name: p.name, namespace: p.namespace, ...p.spec })) });
  return policies.map((p) => stringify({ apiVersion: 'meshlet.dev/v1alpha1', kind: 'MeshPolicy', metadata: { name: p.name, namespace: p.namespace }, spec: p.spec })).join('---\n');
}
