// Flags as data: each command declares one table (name, type, default, range, help), and parsing,
// validation, defaults and `meshlet <command> --help` all come from it. What a table cannot say
// (flags that exclude each other, values that depend on another flag) the loaders check by hand.
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { ConfigError } from '../errors.ts';

export type FlagType =
  /** A string taken as given (paths, names): loaders check what they need. */
  | { type: 'text'; arg: string; pattern?: RegExp; patternHelp?: string }
  /** Present or not. */
  | { type: 'boolean' }
  /** A string that may be given several times. */
  | { type: 'list'; arg: string }
  /** 500ms, 20s, 5m, 24h: milliseconds, within min..max. */
  | { type: 'duration'; min: number; max: number }
  | { type: 'int'; min: number; max: number; arg?: string }
  | { type: 'port' }
  | { type: 'ip' }
  | { type: 'on-off' }
  | { type: 'one-of'; values: readonly string[] };

export type Flag = FlagType & {
  name: string;
  help: string;
  /** As a user would write it (also what --help shows). */
  default?: string;
  /** Environment variables read, in order, when the flag is not given (before the default). */
  env?: readonly string[];
};

type ValueOf<F> =
  F extends { type: 'boolean' | 'on-off' } ? boolean
    : F extends { type: 'list' } ? string[]
      : F extends { type: 'duration' | 'int' | 'port' } ? number
        : F extends { type: 'one-of'; values: readonly (infer V)[] } ? V
          : string;

/** The values of a table's flags, typed: a flag without a default may be undefined. */
export type FlagValues<T extends readonly Flag[]> = {
  [F in T[number] as F['name']]: F extends { default: string } | { type: 'boolean' | 'list' } ? ValueOf<F> : ValueOf<F> | undefined;
};

/** Problems found while reading a command's flags: all of them are reported at once. */
export class Problems {
  readonly list: string[] = [];
  add(problem: string): void {
    this.list.push(problem);
  }
  required<T>(flag: string, value: T | undefined): T | '' {
    if (value === undefined || value === '') this.list.push(`--${flag} is required`);
    return value ?? '';
  }
  throwIfAny(): void {
    if (this.list.length > 0) throw new ConfigError(this.list);
  }
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses durations like 500ms, 20s, 5m, 24h. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * (UNITS[m[2] as string] as number));
}

export interface ReadFlags<T extends readonly Flag[]> {
  values: FlagValues<T>;
  positionals: string[];
  /** Whether the user gave the flag (on the command line or through its environment variable). */
  given(name: T[number]['name']): boolean;
  problems: Problems;
}

/**
 * Reads `argv` with a table: unknown flags and missing values are a ConfigError at once; every
 * value of the wrong form or out of range is a problem in `problems` (the caller adds its own and
 * throws them together).
 */
export function readFlags<const T extends readonly Flag[]>(table: T, argv: string[], env: NodeJS.ProcessEnv = {}, opts: { positionals?: boolean } = {}): ReadFlags<T> {
  const options = Object.fromEntries(table.map((f) => [f.name, f.type === 'boolean' ? { type: 'boolean' as const } : { type: 'string' as const, multiple: f.type === 'list' }]));
  let parsed: { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, strict: true, allowPositionals: opts.positionals ?? false, options }) as typeof parsed;
  } catch (err) {
    throw new ConfigError([(err as Error).message]);
  }
  const problems = new Problems();
  const values: Record<string, unknown> = {};
  const given = new Set<string>();
  for (const f of table) {
    let raw = parsed.values[f.name];
    if (raw !== undefined) given.add(f.name);
    const fromEnv = f.env?.map((name) => env[name]).find((v) => v !== undefined && v !== '');
    if (raw === undefined && fromEnv !== undefined) { raw = fromEnv; given.add(f.name); }
    raw ??= f.type === 'boolean' ? false : f.type === 'list' ? [] : f.default;
    values[f.name] = raw === undefined || typeof raw === 'boolean' || Array.isArray(raw) ? raw : convert(f, raw, problems);
  }
  return { values: values as FlagValues<T>, positionals: parsed.positionals, given: (name) => given.has(name), problems };
}

function convert(f: Flag, text: string, p: Problems): unknown {
  const flag = `--${f.name}`;
  switch (f.type) {
    case 'duration': {
      const ms = parseDuration(text);
      if (ms === undefined) p.add(`${flag}: ${JSON.stringify(text)} is not a duration (e.g. 500ms, 20s, 24h)`);
      else if (ms < f.min || ms > f.max) p.add(`${flag}: ${text} is outside ${f.min} ms .. ${f.max} ms`);
      return ms ?? 0;
    }
    case 'int': {
      const n = Number(text);
      if (!/^\d+$/.test(text) || n < f.min || n > f.max) p.add(`${flag}: ${JSON.stringify(text)} is not a whole number in ${f.min} .. ${f.max}`);
      return n;
    }
    case 'port': {
      const n = Number(text);
      if (!/^\d+$/.test(text) || n < 1 || n > 65535) p.add(`${flag}: ${JSON.stringify(text)} is not a TCP port`);
      return n;
    }
    case 'ip':
      if (!isIP(text)) p.add(`${flag}: ${JSON.stringify(text)} is not an IP address`);
      return text;
    case 'on-off':
      if (text !== 'on' && text !== 'off') p.add(`${flag}: ${JSON.stringify(text)} is not on or off`);
      return text === 'on';
    case 'one-of':
      if (!f.values.includes(text)) {
        p.add(`${flag}: ${JSON.stringify(text)} is not one of ${f.values.join(', ')}`);
        return f.values[0];
      }
      return text;
    case 'text':
      if (f.pattern && !f.pattern.test(text)) p.add(`${flag}: ${JSON.stringify(text)} is not ${f.patternHelp ?? `of the form ${f.pattern}`}`);
      return text;
    default:
      return text;
  }
}

/** What --help shows for a flag's value. */
function argOf(f: Flag): string {
  switch (f.type) {
    case 'boolean': return '';
    case 'duration': return 'DUR';
    case 'int': return f.arg ?? 'N';
    case 'port': return 'PORT';
    case 'ip': return 'IP';
    case 'on-off': return 'on|off';
    case 'one-of': return f.values.join('|');
    default: return f.arg;
  }
}

/** The flag lines of `meshlet <command> --help`: one per flag, its default (or variables) in brackets. */
export function flagHelp(table: readonly Flag[]): string {
  const rows = table.map((f) => {
    const head = `--${f.name}${argOf(f) ? ` ${argOf(f)}` : ''}`;
    const from = [...(f.env ?? []).map((e) => `$${e}`), ...(f.default !== undefined ? [f.default] : [])];
    return { head, text: `${f.help}${from.length > 0 ? ` [${from.join(', then ')}]` : ''}` };
  });
  const width = Math.min(34, Math.max(...rows.map((r) => r.head.length)) + 2);
  return rows.map((r) => (r.head.length + 2 > width ? `  ${r.head}\n  ${' '.repeat(width)}${r.text}` : `  ${r.head.padEnd(width)}${r.text}`)).join('\n');
}
