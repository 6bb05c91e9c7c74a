// The one MeshPolicy schema: the CRD's openAPIV3Schema (manifests/crd-meshpolicy.yaml), compiled
// with ajv on first use and applied to policies from the workloads file and from the cluster alike.
// Unknown fields are refused, as the API server's strict field validation does. What a JSON schema
// cannot say (an empty `from` entry, address ranges, L7 fields) spec.ts checks by hand.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { ErrorObject, ValidateFunction } from 'ajv';

export const CRD_FILE = new URL('../../manifests/crd-meshpolicy.yaml', import.meta.url);

/** What a pattern of the schema means, said the way the rest of meshlet's problems are. */
const PATTERN_MEANING: Record<string, string> = {
  '^(\\*|\\*?[^*\\s]+\\*?)$': 'may only use * alone, or at the start or the end',
  '^(\\*|\\*?[a-z0-9-]+\\*?)$': 'is not a namespace pattern (* alone, or at the start or the end)',
  '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$': 'is not an IP address or CIDR block',
};

let validator: ValidateFunction | undefined;

/** The CRD's schema of `spec`, made strict: no description or Kubernetes extension, no unknown field. */
export function specSchema(): Record<string, unknown> {
  // Loaded here, at the first policy, like ajv: a process without policies never pays for either.
  const { parse } = createRequire(import.meta.url)('yaml') as typeof import('yaml');
  const crd = parse(readFileSync(CRD_FILE, 'utf8')) as { spec: { versions: Array<{ schema: { openAPIV3Schema: { properties: { spec: unknown } } } }> } };
  return strict(crd.spec.versions[0]!.schema.openAPIV3Schema.properties.spec) as Record<string, unknown>;
}

function strict(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(strict);
  if (typeof node !== 'object' || node === null) return node;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === 'description' || k.startsWith('x-kubernetes-')) continue;
    out[k] = k === 'properties' ? Object.fromEntries(Object.entries(v as object).map(([name, s]) => [name, strict(s)])) : strict(v);
  }
  if ('properties' in out && !('additionalProperties' in out)) out.additionalProperties = false;
  return out;
}

/** Every way `spec` departs from the schema, each with its path under `where`. */
export function schemaProblems(spec: unknown, where: string): string[] {
  if (!validator) {
    // Loaded when a first policy is read: an agent without policies never pays for ajv (bench/README.md).
    const Ajv = createRequire(import.meta.url)('ajv').default as typeof import('ajv').default;
    validator = new Ajv({ allErrors: true, strict: false, verbose: true }).compile(specSchema());
  }
  if (validator(spec)) return [];
  return (validator.errors ?? []).map((e) => describe(e, where));
}

function describe(e: ErrorObject, where: string): string {
  const path = where + e.instancePath.split('/').slice(1).map((p) => (/^\d+$/.test(p) ? `[${p}]` : `.${p}`)).join('');
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': return `${path}: unknown field ${JSON.stringify(p.additionalProperty)}`;
    case 'enum': return `${path}: ${JSON.stringify(e.data)} is not one of ${(p.allowedValues as unknown[]).join(', ')}`;
    case 'type': return `${path}: must be ${({ array: 'a list', object: 'a mapping', integer: 'a whole number' } as Record<string, string>)[String(p.type)] ?? `a ${String(p.type)}`}`;
    case 'pattern': return `${path}: ${JSON.stringify(e.data)} ${PATTERN_MEANING[String(p.pattern)] ?? `does not match ${String(p.pattern)}`}`;
    case 'minimum': case 'maximum': return `${path}: ${JSON.stringify(e.data)} ${e.message ?? 'is out of range'}`;
    case 'maxItems': return `${path}: more than ${String(p.limit)} entries`;
    case 'maxProperties': return `${path}: more than ${String(p.limit)} fields`;
    case 'maxLength': return `${path}: longer than ${String(p.limit)} characters`;
    default: return `${path}: ${e.message ?? e.keyword}`;
  }
}
