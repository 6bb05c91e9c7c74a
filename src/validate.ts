// Small readers for untrusted YAML/JSON documents (the workloads file, MeshPolicy specs): each
// records what is wrong in `problems`, with the path to it, and carries on, so that a user sees
// every problem of a document at once.

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function unknownKeys(obj: Record<string, unknown>, allowed: ReadonlySet<string> | readonly string[], where: string, problems: string[]): void {
  const ok = (k: string) => ('has' in allowed ? allowed.has(k) : allowed.includes(k));
  for (const key of Object.keys(obj)) if (!ok(key)) problems.push(`${where}: unknown field ${JSON.stringify(key)}`);
}

/**
 * The mappings of a list field, each with its path (`where[i]`). Anything else (not a list, an
 * entry that is not a mapping) is a problem; an absent field is one only when `required`.
 */
export function mappings(value: unknown, where: string, problems: string[], required = false): Array<[Record<string, unknown>, string]> {
  if (value === undefined && !required) return [];
  if (!Array.isArray(value)) {
    problems.push(`${where}: ${required ? 'required list' : 'must be a list'}`);
    return [];
  }
  const out: Array<[Record<string, unknown>, string]> = [];
  for (const [i, raw] of value.entries()) {
    if (isRecord(raw)) out.push([raw, `${where}[${i}]`]);
    else problems.push(`${where}[${i}]: must be a mapping`);
  }
  return out;
}
