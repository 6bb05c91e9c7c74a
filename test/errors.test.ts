// Every error code a user can see in a log or metric label is documented (docs/errors.md).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import * as errors from '../src/errors.ts';

describe('error codes', () => {
  type ErrorClass = new (...args: any[]) => errors.MeshletError;
  const classes = (Object.values(errors) as unknown[]).filter((v): v is ErrorClass =>
    typeof v === 'function' && (v as { prototype?: unknown }).prototype instanceof errors.MeshletError && v !== errors.CaRefusal);
  // An array works for every constructor: string parameters only end up in template literals.
  const codes = classes.map((C) => new C(['x'], 'y').code);

  it('are unique and listed in errorCodes', () => {
    assert.equal(new Set(codes).size, codes.length);
    assert.deepEqual([...codes].sort(), [...errors.errorCodes].sort());
  });

  it('are each documented in docs/errors.md', () => {
    const doc = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');
    const missing = codes.filter((c) => !doc.includes(`\`${c}\``));
    assert.deepEqual(missing, []);
  });
});
