// A MeshPolicy compiled once per change into matchers, so that a connection costs O(rules of the
// policies that select its destination) and no parsing.
//
// Matching, as in Istio's AuthorizationPolicy: a policy matches a connection when any rule does; a
// rule matches when (no `from`, or any `from` entry matches) and (no `to`, or any `to` entry
// matches); an entry matches when every field it sets matches. Principals and namespaces take `*`
// alone (any authenticated value), as a prefix or as a suffix; a plaintext source has neither, so
// it matches no `principals` and every `notPrincipals`.
//
// Fail closed, never silently open:
// - L7 fields (paths, methods, hosts) cannot be checked on a TCP connection. In an ALLOW policy the
//   `to` entry that names them matches nothing; in DENY and AUDIT they are dropped, so the entry
//   matches on its L4 fields alone (denies more). Each case is reported as a warning.
// - A policy whose spec cannot be read still selects its workloads: as ALLOW it matches nothing
//   (they fall to "no ALLOW matched"), as DENY it matches everything, as AUDIT nothing.
import { BlockList, isIPv4 } from 'node:net';
import type { ConnectionAttributes } from './hook.ts';
import { addCidr, type PolicyAction, type PolicyOperation, type PolicySource, type PolicySpec, readPolicySpec } from './spec.ts';
import type { MeshPolicyObject, Workload } from '../workloads/model.ts';

export const ROOT_NAMESPACE = 'meshlet-system';

export interface CompiledPolicy {
  /** namespace/name */
  id: string;
  namespace: string;
  name: string;
  action: PolicyAction;
  /** Whether the policy applies to connections towards this workload. */
  selects(w: Workload): boolean;
  matches(c: ConnectionAttributes): boolean;
  rules: number;
  /** Parts that could not be enforced as written (and what was done instead). */
  warnings: string[];
  /** Why the spec could not be read at all (then the fail-closed behaviour above applies). */
  errors: string[];
}

type Matcher = (c: ConnectionAttributes) => boolean;

/** Istio writes principals without the scheme; connections carry full SPIFFE IDs. Patterns are
 *  given the scheme once, at compile time, so values are compared as they come. */
const withScheme = (p: string) => (p === '*' || p.startsWith('*') || p.startsWith('spiffe://') ? p : `spiffe://${p}`);

/** Exact, `*`, `prefix*` and `*suffix` patterns; the empty value (no identity) matches none. */
export function patternSet(patterns: string[], normalize: (pattern: string) => string = (s) => s): (value: string) => boolean {
  const exact = new Set<string>();
  const prefixes: string[] = [];
  const suffixes: string[] = [];
  let any = false;
  for (const raw of patterns) {
    const p = normalize(raw);
    if (p === '*') any = true;
    else if (p.endsWith('*')) prefixes.push(p.slice(0, -1));
    else if (p.startsWith('*')) suffixes.push(p.slice(1));
    else exact.add(p);
  }
  return (v) => {
    if (v === '') return false;
    if (any || exact.has(v)) return true;
    for (const p of prefixes) if (v.startsWith(p)) return true;
    for (const s of suffixes) if (v.endsWith(s)) return true;
    return false;
  };
}

function blockList(cidrs: string[]): (ip: string) => boolean {
  const list = new BlockList();
  for (const c of cidrs) addCidr(list, c);
  return (ip) => ip !== '' && list.check(ip, isIPv4(ip) ? 'ipv4' : 'ipv6');
}

function sourceMatcher(src: PolicySource): Matcher {
  const checks: Matcher[] = [];
  const principal = (c: ConnectionAttributes) => c.sourcePrincipal ?? '';
  const namespace = (c: ConnectionAttributes) => c.sourceNamespace ?? '';
  if (src.principals) { const m = patternSet(src.principals, withScheme); checks.push((c) => m(principal(c))); }
  if (src.notPrincipals) { const m = patternSet(src.notPrincipals, withScheme); checks.push((c) => !m(principal(c))); }
  if (src.namespaces) { const m = patternSet(src.namespaces); checks.push((c) => m(namespace(c))); }
  if (src.notNamespaces) { const m = patternSet(src.notNamespaces); checks.push((c) => !m(namespace(c))); }
  if (src.ipBlocks) { const m = blockList(src.ipBlocks); checks.push((c) => m(c.sourceIp)); }
  if (src.notIpBlocks) { const m = blockList(src.notIpBlocks); checks.push((c) => !m(c.sourceIp)); }
  return (c) => checks.every((check) => check(c));
}

function operationMatcher(op: PolicyOperation, action: PolicyAction, where: string, warnings: string[]): Matcher {
  if (op.l7) {
    if (action === 'ALLOW') {
      warnings.push(`${where}: ${op.l7.join(', ')} cannot be enforced at L4; this ALLOW entry matches nothing`);
      return () => false;
    }
    warnings.push(`${where}: ${op.l7.join(', ')} cannot be enforced at L4; ignored, so this ${action} entry applies to every request on its ports`);
  }
  const checks: Matcher[] = [];
  if (op.ports) { const s = new Set(op.ports); checks.push((c) => s.has(c.destinationPort)); }
  if (op.notPorts) { const s = new Set(op.notPorts); checks.push((c) => !s.has(c.destinationPort)); }
  return (c) => checks.every((check) => check(c));
}

function selector(matchLabels: Record<string, string> | undefined): (w: Workload) => boolean {
  if (!matchLabels) return () => true;
  const pairs = Object.entries(matchLabels);
  return (w) => pairs.every(([k, v]) => w.labels[k] === v);
}

export function compilePolicy(obj: MeshPolicyObject, rootNamespace = ROOT_NAMESPACE): CompiledPolicy {
  const id = `${obj.namespace}/${obj.name}`;
  const read = readPolicySpec(obj.spec);
  const { spec } = read;
  const problems = [...(obj.problems ?? []), ...read.problems];
  const inScope = obj.namespace === rootNamespace ? () => true : (w: Workload) => w.namespace === obj.namespace;
  const warnings: string[] = [];
  if (problems.length > 0) {
    // The selector, if it could be read, still narrows; an unreadable one selects the whole scope.
    const sel = selector(spec.matchLabels);
    return {
      id, namespace: obj.namespace, name: obj.name, action: spec.action,
      selects: (w) => inScope(w) && sel(w),
      matches: () => spec.action === 'DENY',
      rules: 0, warnings, errors: problems,
    };
  }
  const sel = selector(spec.matchLabels);
  const rules = (spec.rules ?? []).map((rule, i) => {
    const from = rule.from?.map(sourceMatcher);
    const to = rule.to?.map((op, j) => operationMatcher(op, spec.action, `rules[${i}].to[${j}]`, warnings));
    return (c: ConnectionAttributes) => (!from || from.some((m) => m(c))) && (!to || to.some((m) => m(c)));
  });
  return {
    id, namespace: obj.namespace, name: obj.name, action: spec.action,
    selects: (w) => inScope(w) && sel(w),
    // No rules: an ALLOW allows nothing, a DENY or AUDIT never applies (Istio's "allow-nothing").
    matches: (c) => rules.some((r) => r(c)),
    rules: rules.length, warnings, errors: [],
  };
}

/** The policies that select one workload, split by action. */
export interface Applicable {
  deny: CompiledPolicy[];
  allow: CompiledPolicy[];
  audit: CompiledPolicy[];
}

/**
 * Every policy of the mesh, compiled, indexed by namespace. Which ones select a workload is worked
 * out once per workload object and cached (a new snapshot brings new objects only for what changed).
 */
export class CompiledPolicies {
  readonly all: CompiledPolicy[];
  readonly #byNamespace = new Map<string, CompiledPolicy[]>();
  readonly #root: CompiledPolicy[];
  readonly #rootNamespace: string;
  readonly #cache = new WeakMap<Workload, Applicable>();

  constructor(objects: readonly MeshPolicyObject[], rootNamespace = ROOT_NAMESPACE) {
    this.#rootNamespace = rootNamespace;
    this.all = objects.map((o) => compilePolicy(o, rootNamespace));
    for (const p of this.all) {
      let list = this.#byNamespace.get(p.namespace);
      if (!list) this.#byNamespace.set(p.namespace, list = []);
      list.push(p);
    }
    this.#root = this.#byNamespace.get(rootNamespace) ?? [];
  }

  applicable(w: Workload): Applicable {
    let a = this.#cache.get(w);
    if (a) return a;
    a = { deny: [], allow: [], audit: [] };
    const candidates = w.namespace === this.#rootNamespace ? this.#root : [...this.#root, ...(this.#byNamespace.get(w.namespace) ?? [])];
    for (const p of candidates) {
      if (!p.selects(w)) continue;
      (p.action === 'DENY' ? a.deny : p.action === 'ALLOW' ? a.allow : a.audit).push(p);
    }
    this.#cache.set(w, a);
    return a;
  }
}
