// MeshPolicy's spec, read from untrusted input (the workloads file, or a CRD object) into a typed
// value with every problem listed. The same reader serves both sources, so a policy means the same
// thing whichever way it arrived. Semantics are those of Istio's AuthorizationPolicy at L4.
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { isRecord, mappings, unknownKeys } from '../validate.ts';

export const ACTIONS = ['ALLOW', 'DENY', 'AUDIT'] as const;
export type PolicyAction = (typeof ACTIONS)[number];

/** Fields a rule's `to` may name that only an L7 proxy could check. */
export const L7_FIELDS = ['paths', 'methods', 'hosts'] as const;

export interface PolicySource {
  principals?: string[];
  notPrincipals?: string[];
  namespaces?: string[];
  notNamespaces?: string[];
  ipBlocks?: string[];
  notIpBlocks?: string[];
}

export interface PolicyOperation {
  ports?: number[];
  notPorts?: number[];
  /** L7 fields present in this entry (not enforceable here; see compile.ts). */
  l7?: string[];
}

export interface PolicyRule {
  from?: PolicySource[];
  to?: PolicyOperation[];
}

export interface PolicySpec {
  /** matchLabels on destination workloads; undefined selects every workload in scope. */
  matchLabels?: Record<string, string>;
  action: PolicyAction;
  /** undefined: no rules (ALLOW matches nothing, DENY/AUDIT never apply). */
  rules?: PolicyRule[];
}

const SOURCE_LISTS = ['principals', 'notPrincipals', 'namespaces', 'notNamespaces', 'ipBlocks', 'notIpBlocks'] as const;
const PATTERN = /^(\*|\*?[^*\s]+\*?)$/;


/** Whether text is an IPv4/IPv6 address or CIDR that BlockList accepts. */
export function isCidr(text: string): boolean {
  const [ip, bits, extra] = text.split('/');
  if (extra !== undefined || !ip) return false;
  const v4 = isIPv4(ip);
  if (!v4 && !isIPv6(ip)) return false;
  if (bits === undefined) return true;
  if (!/^\d{1,3}$/.test(bits)) return false;
  return Number(bits) <= (v4 ? 32 : 128);
}

/** Adds an address or CIDR to a BlockList (the caller checked it with isCidr). */
export function addCidr(list: BlockList, text: string): void {
  const [ip, bits] = text.split('/') as [string, string | undefined];
  const type = isIPv4(ip) ? 'ipv4' : 'ipv6';
  if (bits === undefined) list.addAddress(ip, type);
  else list.addSubnet(ip, Number(bits), type);
}

function stringList(v: unknown, where: string, problems: string[], check?: (s: string) => string | undefined): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) {
    problems.push(`${where}: must be a list of strings`);
    return undefined;
  }
  for (const s of v as string[]) {
    const why = check?.(s);
    if (why) problems.push(`${where}: ${JSON.stringify(s)} ${why}`);
  }
  return v as string[];
}

function portList(v: unknown, where: string, problems: string[]): number[] | undefined {
  if (v === undefined) return undefined;
  // Istio writes ports as strings; the CRD as integers. Both mean the same.
  if (!Array.isArray(v)) {
    problems.push(`${where}: must be a list of ports`);
    return undefined;
  }
  const out: number[] = [];
  for (const p of v) {
    const n = typeof p === 'string' && /^\d+$/.test(p) ? Number(p) : p;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 65535) problems.push(`${where}: ${JSON.stringify(p)} is not a port (1-65535)`);
    else out.push(n);
  }
  return out;
}

/** Reads a policy spec. Returns the spec and the problems; a spec with problems must not be trusted. */
export function readPolicySpec(raw: unknown, where = 'spec'): { spec: PolicySpec; problems: string[] } {
  const problems: string[] = [];
  const spec: PolicySpec = { action: 'ALLOW' };
  if (!isRecord(raw)) return { spec, problems: [`${where}: must be a mapping`] };
  unknownKeys(raw, ['selector', 'action', 'rules'], where, problems);

  if (raw.selector !== undefined) {
    const sel = raw.selector;
    if (!isRecord(sel)) problems.push(`${where}.selector: must be a mapping`);
    else {
      unknownKeys(sel, ['matchLabels'], `${where}.selector`, problems);
      if (sel.matchLabels !== undefined) {
        if (!isRecord(sel.matchLabels) || Object.values(sel.matchLabels).some((v) => typeof v !== 'string')) {
          problems.push(`${where}.selector.matchLabels: must map label names to strings`);
        } else if (Object.keys(sel.matchLabels).length > 0) {
          spec.matchLabels = sel.matchLabels as Record<string, string>;
        }
      }
    }
  }

  if (raw.action !== undefined) {
    if (typeof raw.action !== 'string' || !(ACTIONS as readonly string[]).includes(raw.action)) {
      problems.push(`${where}.action: ${JSON.stringify(raw.action)} is not one of ${ACTIONS.join(', ')}`);
    } else {
      spec.action = raw.action as PolicyAction;
    }
  }

  if (raw.rules !== undefined) {
    if (!Array.isArray(raw.rules)) problems.push(`${where}.rules: must be a list`);
    else spec.rules = raw.rules.map((r, i) => readRule(r, `${where}.rules[${i}]`, problems));
  }
  return { spec, problems };
}

function readRule(raw: unknown, where: string, problems: string[]): PolicyRule {
  const rule: PolicyRule = {};
  if (!isRecord(raw)) {
    problems.push(`${where}: must be a mapping`);
    return rule;
  }
  unknownKeys(raw, ['from', 'to', 'when'], where, problems);
  if (raw.when !== undefined) problems.push(`${where}.when: conditions are not supported; express them with from and to`);
  if (raw.from !== undefined) {
    rule.from = mappings(raw.from, `${where}.from`, problems).map(([f, w]) => {
      const src: PolicySource = {};
      unknownKeys(f, SOURCE_LISTS, w, problems);
      if (Object.keys(f).length === 0) problems.push(`${w}: an empty from entry would match every source; leave out from instead`);
      src.principals = stringList(f.principals, `${w}.principals`, problems, patternProblem);
      src.notPrincipals = stringList(f.notPrincipals, `${w}.notPrincipals`, problems, patternProblem);
      src.namespaces = stringList(f.namespaces, `${w}.namespaces`, problems, patternProblem);
      src.notNamespaces = stringList(f.notNamespaces, `${w}.notNamespaces`, problems, patternProblem);
      src.ipBlocks = stringList(f.ipBlocks, `${w}.ipBlocks`, problems, cidrProblem);
      src.notIpBlocks = stringList(f.notIpBlocks, `${w}.notIpBlocks`, problems, cidrProblem);
      return src;
    });
  }
  if (raw.to !== undefined) {
    rule.to = mappings(raw.to, `${where}.to`, problems).map(([t, w]) => {
      const op: PolicyOperation = {};
      unknownKeys(t, ['ports', 'notPorts', ...L7_FIELDS, 'notPaths', 'notMethods', 'notHosts'], w, problems);
      op.ports = portList(t.ports, `${w}.ports`, problems);
      op.notPorts = portList(t.notPorts, `${w}.notPorts`, problems);
      const l7 = Object.keys(t).filter((k) => !['ports', 'notPorts'].includes(k) && t[k] !== undefined);
      if (l7.length > 0) op.l7 = l7;
      return op;
    });
  }
  return rule;
}

function patternProblem(s: string): string | undefined {
  return PATTERN.test(s) ? undefined : 'may only use * alone, or at the start or the end';
}

function cidrProblem(s: string): string | undefined {
  return isCidr(s) ? undefined : 'is not an IP address or CIDR block';
}
