// Model bundle loading: manifest.json validated against docs/schemas/model-manifest.schema.json, model file sha256 checked.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import AjvModule from 'ajv';
import type { ErrorObject, ValidateFunction } from 'ajv';
import type { ModelManifest } from './manifest.js';

// ajv is CommonJS; under NodeNext its class is the module's `default` property.
const Ajv = AjvModule.default;

const HERE = dirname(fileURLToPath(import.meta.url));
/** The schema lives in docs/schemas; from dist/models as well as from models/ (tsx) it is two levels up at most. */
async function readSchema(): Promise<object> {
  const candidates = [join(HERE, '..', 'docs', 'schemas', 'model-manifest.schema.json'), join(HERE, '..', '..', 'docs', 'schemas', 'model-manifest.schema.json')];
  let lastErr: unknown;
  for (const c of candidates) {
    try {
      return JSON.parse(await readFile(c, 'utf8')) as object;
    } catch (err) {
      lastErr = err;
    }
  }
  throw new Error(`model-manifest schema not found (${candidates.join(', ')}): ${(lastErr as Error).message}`);
}

let validatorPromise: Promise<ValidateFunction> | null = null;
function validator(): Promise<ValidateFunction> {
  // compiled once per process: a pure cache of an immutable file, not mutable state
  validatorPromise ??= readSchema().then((schema) => new Ajv({ allErrors: true, strict: false }).compile(schema));
  return validatorPromise;
}

export class BundleError extends Error {
  constructor(
    message: string,
    /** JSON pointer of the offending manifest field ('' for the whole file). */
    readonly field: string,
  ) {
    super(message);
    this.name = 'BundleError';
  }
}

function describe(e: ErrorObject): { field: string; text: string } {
  const missing = e.keyword === 'required' ? `/${(e.params as { missingProperty: string }).missingProperty}` : '';
  const extra = e.keyword === 'additionalProperties' ? `/${(e.params as { additionalProperty: string }).additionalProperty}` : '';
  const field = `${e.instancePath}${missing}${extra}` || '/';
  return { field, text: `${field}: ${e.message ?? e.keyword}${e.keyword === 'enum' ? ` (${JSON.stringify((e.params as { allowedValues: unknown }).allowedValues)})` : ''}` };
}

/** Validates a manifest object; throws BundleError naming the first offending field (all problems in the message). */
export async function validateManifest(m: unknown, where = 'manifest.json'): Promise<ModelManifest> {
  const v = await validator();
  if (!v(m)) {
    const errs = (v.errors ?? []).map(describe);
    throw new BundleError(`${where}: invalid manifest: ${errs.map((e) => e.text).join('; ')}`, errs[0]?.field ?? '/');
  }
  return m as ModelManifest;
}

export async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/** Loads and checks a bundle directory: schema-valid manifest.json and a model file whose sha256 matches. */
export async function loadBundle(dir: string): Promise<{ manifest: ModelManifest; modelPath: string }> {
  const root = resolve(dir);
  const mf = join(root, 'manifest.json');
  let text: string;
  try {
    text = await readFile(mf, 'utf8');
  } catch (err) {
    throw new BundleError(`model bundle ${root}: cannot read manifest.json: ${(err as Error).message}`, '');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new BundleError(`model bundle ${root}: manifest.json is not JSON: ${(err as Error).message}`, '');
  }
  const manifest = await validateManifest(raw, mf);
  const modelPath = join(root, manifest.file);
  let sha: string;
  try {
    sha = await sha256File(modelPath);
  } catch (err) {
    throw new BundleError(`model bundle ${root}: model file ${manifest.file} (field /file) cannot be read: ${(err as Error).message}`, '/file');
  }
  if (sha !== manifest.sha256) {
    throw new BundleError(`model bundle ${root}: /sha256 mismatch: ${manifest.file} hashes to ${sha}, manifest says ${manifest.sha256}`, '/sha256');
  }
  return { manifest, modelPath };
}
