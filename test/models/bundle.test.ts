import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BundleError, loadBundle } from '../../models/bundle.js';

const DEFAULT = resolve(import.meta.dirname, '..', '..', 'models', 'default');

describe('model bundle loading', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'focusd-bundle-'));
    await copyFile(join(DEFAULT, 'model.onnx'), join(dir, 'model.onnx'));
    await copyFile(join(DEFAULT, 'manifest.json'), join(dir, 'manifest.json'));
  });
  afterEach(async () => rm(dir, { recursive: true, force: true }));

  const editManifest = async (f: (m: Record<string, any>) => void) => {
    const m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
    f(m);
    await writeFile(join(dir, 'manifest.json'), JSON.stringify(m));
  };

  it('loads the shipped default bundle: valid manifest, matching sha256, the documented contract', async () => {
    const { manifest, modelPath } = await loadBundle(DEFAULT);
    expect(modelPath).toBe(join(DEFAULT, 'model.onnx'));
    expect(manifest.format).toBe('onnx');
    expect(manifest.input).toMatchObject({ name: 'input', layout: 'NCHW', size: [320, 320], channel_order: 'RGB' });
    expect(manifest.outputs.abs_um).toBe('abs_um');
    expect(manifest.outputs.sign_logit).toBe('sign_logit');
    expect(manifest.calibration).toMatchObject({ slope: 1, intercept: 0, sign: 'model' });
    expect(manifest.metrics).toHaveProperty('synthetic_holdout');
  });

  it('rejects a corrupted sha256, naming the field', async () => {
    await editManifest((m) => {
      m.sha256 = '0'.repeat(64);
    });
    const err = await loadBundle(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BundleError);
    expect((err as BundleError).field).toBe('/sha256');
    expect((err as Error).message).toMatch(/sha256 mismatch/);
  });

  it('rejects a modified model file', async () => {
    const buf = await readFile(join(dir, 'model.onnx'));
    buf[buf.length - 10] ^= 0xff;
    await writeFile(join(dir, 'model.onnx'), buf);
    await expect(loadBundle(dir)).rejects.toThrow(/sha256 mismatch/);
  });

  it('names a missing required field', async () => {
    await editManifest((m) => {
      delete m.calibration.sign;
    });
    const err = (await loadBundle(dir).catch((e: unknown) => e)) as BundleError;
    expect(err).toBeInstanceOf(BundleError);
    expect(err.field).toBe('/calibration/sign');
    expect(err.message).toMatch(/\/calibration\/sign/);
  });

  it('names a bad enum value and a malformed sha', async () => {
    await editManifest((m) => {
      m.format = 'pytorch';
      m.sha256 = 'xyz';
    });
    const err = (await loadBundle(dir).catch((e: unknown) => e)) as BundleError;
    expect(err.message).toMatch(/\/format/);
    expect(err.message).toMatch(/\/sha256/);
  });

  it('accepts a tfjs bundle manifest shape (schema is general) and reports a missing model file by field', async () => {
    await editManifest((m) => {
      m.format = 'tfjs-graph';
      m.file = 'model.json';
      m.input.layout = 'NHWC';
    });
    const err = (await loadBundle(dir).catch((e: unknown) => e)) as BundleError;
    expect(err.field).toBe('/file');
  });

  it('rejects a model file outside the bundle and non-JSON manifests', async () => {
    await editManifest((m) => {
      m.file = '../elsewhere.onnx';
    });
    await expect(loadBundle(dir)).rejects.toThrow(/\/file/);
    await writeFile(join(dir, 'manifest.json'), '{ not json');
    await expect(loadBundle(dir)).rejects.toThrow(/not JSON/);
  });
});

describe('the model card and the shipped manifest stand alone on a user\'s machine', () => {
  it('name the training images relative to the checkout (../shared/data), never a path of the machine they were made on', async () => {
    const root = resolve(import.meta.dirname, '..', '..');
    const card = await readFile(join(root, 'models', 'README.md'), 'utf8');
    const manifest = await readFile(join(DEFAULT, 'manifest.json'), 'utf8');
    for (const [name, text] of [['models/README.md', card], ['models/default/manifest.json', manifest]] as const) {
      expect(text.match(/\/(work|home|root)\/[\w.-]+/g) ?? [], name).toEqual([]);
    }
    expect(card).toContain('../shared/data/infocus');
  });
});
