import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { renderConfigDoc } from '../../scripts/gen-config-doc.js';

it('docs/configuration.md matches the schema (regenerate: npx tsx scripts/gen-config-doc.ts)', () => {
  expect(readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8')).toBe(renderConfigDoc());
});
