// Every router reply must match the published reply schema (docs/schemas/tile-reply.schema.json).
import { readFileSync } from 'node:fs';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

export const validateReply = (() => {
  const load = (f: string) => JSON.parse(readFileSync(new URL(`../../docs/schemas/${f}`, import.meta.url), 'utf8')) as object;
  const ajv = new Ajv2020({ allErrors: true, strictRequired: false });
  (addFormats as unknown as { default: (a: Ajv2020) => void }).default(ajv);
  ajv.addSchema(load('tile-header.schema.json'));
  return ajv.compile(load('tile-reply.schema.json'));
})();
