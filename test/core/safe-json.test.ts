import { describe, expect, it } from 'vitest';
import { tileMeta } from '../../core/logger.js';
import { safeStringify } from '../../core/safe-json.js';

/** An object nested `n` levels deep: JSON.stringify of it overflows the stack for n in the thousands. */
function deep(n: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < n; i++) v = { a: v };
  return v;
}

describe('serialising received values never throws (issue 10, defect 3)', () => {
  it('safeStringify falls back when JSON.stringify throws', () => {
    const bomb = deep(200_000);
    expect(() => JSON.stringify(bomb)).toThrow();
    const s = safeStringify({ ok: false, header: bomb }, (err) => ({ ok: false, why: err.name }));
    expect(JSON.parse(s)).toEqual({ ok: false, why: 'RangeError' });
    expect(safeStringify({ a: 1 }, () => 'unused')).toBe('{"a":1}');
  });

  it('tileMeta passes only scalars, cut to 200 characters', () => {
    const m = tileMeta({ scanner: deep(200_000), slide: 'x'.repeat(1000), tile: { index: [1, 2] }, seq: 3, attempt: null });
    expect(m).toEqual({ scanner: '(object)', slide: `${'x'.repeat(200)}…`, tile: '(array)', seq: 3, attempt: null });
    expect(() => JSON.stringify(m)).not.toThrow();
  });
});
