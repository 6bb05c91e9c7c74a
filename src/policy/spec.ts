// MeshPolicy's spec, read into a typed value with the problems a schema cannot see. Its shape is
// checked by the one schema (schema.ts, the CRD's) for the workloads file and cluster objects alike,
// so a policy means the same thing whichever way it arrived. Semantics are those of Istio's
// AuthorizationPolicy at L4.
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { isRecord, mappings } from '../validate.ts';

export const ACTIONS = ['ALLOW', 'DENY', 'AUDIT'] as const;
export type PolicyAction = (typeof ACTIONS)[number];

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

/** A list of strings, or undefined with a problem when it is anything else. */
function stringList(v: unknown, where: string, problems: string[], check?: (s: string) => string | undefined): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) {
    problems.push(`${where}: ${UNCHECKED}`);
    return undefined;
  }
  for (const s of v as string[]) {
    const why = check?.(s);
    if (why) problems.push(`${where}: ${JSON.stringify(s)} ${why}`);
  }
  return v as string[];
}

/** Ports as the CRD writes them (integers) or as Istio does (strings of digits). */
function portList(v: unknown, where: string, problems: string[]): number[] | undefined {
  if (v === undefined) return undefined;
  const ports = Array.isArray(v) ? v.map((p) => (typeof p === 'string' && /^\d+$/.test(p) ? Number(p) : p)) : [];
  if (!Array.isArray(v) || ports.some((n) => typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 65535)) {
    problems.push(`${where}: ${UNCHECKED}`);
    return undefined;
  }
  return ports as number[];
}

/** A spec of a shape the schema refuses reached this reader unchecked: the policy fails closed. */
const UNCHECKED = 'not as the MeshPolicy schema says';

/**
 * Reads a spec into a typed value, with the problems only a reader can see: an empty `from` entry
 * (it would match every source), an address out of range, conditions. The shape is the schema's
 * job (schema.ts, run by the sources); a spec of another shape that reaches this reader anyway is
 * a problem here too, so that the policy fails closed and never matches more than it says.
 */
export function readPolicySpec(raw: unknown, where = 'spec'): { spec: PolicySpec; problems: string[] } {
  const problems: string[] = [];
  const spec: PolicySpec = { action: 'ALLOW' };
  if (!isRecord(raw)) return { spec, problems: [`${where}: ${UNCHECKED}`] };
  const sel = raw.selector;
  if (sel !== undefined) {
    const labels = isRecord(sel) ? sel.matchLabels : undefined;
    if (!isRecord(sel) || (labels !== undefined && (!isRecord(labels) || Object.values(labels).some((v) => typeof v !== 'string')))) {
      problems.push(`${where}.selector: ${UNCHECKED}`);
    } else if (isRecord(labels) && Object.keys(labels).length > 0) {
      spec.matchLabels = labels as Record<string, string>;
    }
  }
  if (raw.action !== undefined) {
    if ((ACTIONS as readonly unknown[]).includes(raw.action)) spec.action = raw.action as PolicyAction;
    else problems.push(`${where}.action: ${UNCHECKED}`);
  }
  if (raw.rules !== undefined) {
    if (!Array.isArray(raw.rules)) problems.push(`${where}.rules: ${UNCHECKED}`);
    else spec.rules = raw.rules.map((r, i) => readRule(r, `${where}.rules[${i}]`, problems));
  }
  return { spec, problems };
}

function readRule(raw: unknown, where: string, problems: string[]): PolicyRule {
  const rule: PolicyRule = {};
  if (!isRecord(raw)) {
    problems.push(`${where}: ${UNCHECKED}`);
    return rule;
  }
  // Istio's conditions: ignoring them would match more than the policy says.
  if (raw.when !== undefined) problems.push(`${where}.when: conditions are not supported; express them with from and to`);
  if (raw.from !== undefined) {
    rule.from = mappings(raw.from, `${where}.from`, problems).map(([f, w]) => {
      if (Object.keys(f).length === 0) problems.push(`${w}: an empty from entry would match every source; leave out from instead`);
      return {
        principals: stringList(f.principals, `${w}.principals`, problems),
        notPrincipals: stringList(f.notPrincipals, `${w}.notPrincipals`, problems),
        namespaces: stringList(f.namespaces, `${w}.namespaces`, problems),
        notNamespaces: stringList(f.notNamespaces, `${w}.notNamespaces`, problems),
        // The schema's pattern takes 999.1.1.1/99: the ranges are checked here.
        ipBlocks: stringList(f.ipBlocks, `${w}.ipBlocks`, problems, cidrProblem),
        notIpBlocks: stringList(f.notIpBlocks, `${w}.notIpBlocks`, problems, cidrProblem),
      };
    });
  }
  if (raw.to !== undefined) {
    rule.to = mappings(raw.to, `${where}.to`, problems).map(([t, w]) => {
      const op: PolicyOperation = { ports: portList(t.ports, `${w}.ports`, problems), notPorts: portList(t.notPorts, `${w}.notPorts`, problems) };
      const l7 = Object.keys(t).filter((k) => !['ports', 'notPorts'].includes(k) && t[k] !== undefined);
      if (l7.length > 0) op.l7 = l7;
      return op;
    });
  }
  return rule;
}

function cidrProblem(s: string): string | undefined {
  return isCidr(s) ? undefined : 'is not an IP address or CIDR block';
}
