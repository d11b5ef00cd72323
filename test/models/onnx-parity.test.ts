// The ONNX export gives the same numbers in onnxruntime-node as the model gives in PyTorch. The PyTorch side is
// committed (test/fixtures, made by make_fixtures.py; test/fixtures/test_fixtures.py keeps it current), so this
// test needs no Python.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { loadBundle } from '../../models/bundle.js';
import { ROOT } from '../helpers/proc.js';
import { referenceInputU8 } from '../helpers/reference-input.js';

const FIXTURES = join(ROOT, 'test', 'fixtures');
// float32 kernels differ in summation order between PyTorch and onnxruntime: allow 1e-4 absolute + 1e-4 relative
const ATOL = 1e-4;
const RTOL = 1e-4;

interface Reference {
  shape: [number, number, number, number];
  abs_um: number[];
  sign_logit: number[];
  log_var: number[];
  architecture?: string;
  checkpoint?: string;
}

const readJson = <T>(p: string) => JSON.parse(readFileSync(p, 'utf8')) as T;

/** Normalises the reference's 8-bit input exactly as the daemon does (from the manifest) and opens the model. */
async function referenceInput(bundleDir: string, ref: Reference) {
  const { manifest, modelPath } = await loadBundle(bundleDir);
  const [n, c, h, w] = ref.shape;
  const u8 = referenceInputU8(n, h);
  const { scale, mean, std } = manifest.input.normalisation;
  const x = new Float32Array(n * c * h * w);
  for (let i = 0; i < x.length; i++) {
    const ch = Math.floor(i / (h * w)) % c;
    x[i] = (u8[i]! * scale - mean[ch]!) / std[ch]!;
  }
  const session = await ort.InferenceSession.create(modelPath, { intraOpNumThreads: 1 });
  return { manifest, session, x, dims: [n, c, h, w] as const };
}

function expectReferenceOutputs(out: ort.InferenceSession.OnnxValueMapType, outputs: Record<string, string>, ref: Reference) {
  for (const name of ['abs_um', 'sign_logit', 'log_var'] as const) {
    const got = Array.from(out[outputs[name] ?? name]!.data as Float32Array);
    expect(got).toHaveLength(ref.shape[0]);
    got.forEach((g, i) => expect(Math.abs(g - ref[name][i]!), `${name}[${i}]`).toBeLessThanOrEqual(ATOL + RTOL * Math.abs(ref[name][i]!)));
  }
}

describe('ONNX export parity (PyTorch vs onnxruntime-node)', () => {
  const dir = join(FIXTURES, 'focusnet-random');
  const ref = readJson<Reference>(join(dir, 'reference.json'));

  it('the exported bundle validates and gives the PyTorch outputs for fixed inputs, batch 3 and batch 1', async () => {
    const { manifest, session, x, dims } = await referenceInput(dir, ref);
    const [n, c, h, w] = dims;
    expect(manifest.input.name).toBe('input');
    try {
      expectReferenceOutputs(await session.run({ input: new ort.Tensor('float32', x, [n, c, h, w]) }), manifest.outputs, ref);
      // dynamic batch axis: one patch alone gives the same answer
      const one = await session.run({ input: new ort.Tensor('float32', x.slice(c * h * w, 2 * c * h * w), [1, c, h, w]) });
      expect(Math.abs((one['abs_um']!.data as Float32Array)[0]! - ref.abs_um[1]!)).toBeLessThanOrEqual(ATOL + RTOL * Math.abs(ref.abs_um[1]!));
      // untrained but not degenerate: the three patches give different outputs
      expect(new Set(ref.abs_um.map((v) => v.toFixed(3))).size).toBe(n);
    } finally {
      await session.release();
    }
  });
});

// The model card's numbers come from the committed PyTorch checkpoint (evaluate.py); the daemon runs the committed
// ONNX file. This ties the two for every shipped bundle: its model.onnx answers what its checkpoint answers.
describe('each shipped bundle is its committed checkpoint', () => {
  const bundles = readJson<Array<{ name: string; bundle: string; checkpoint: string }>>(join(FIXTURES, 'bundles.json'));

  it('bundles.json names every bundle under models/ that has a model.onnx', async () => {
    const { readdirSync, existsSync } = await import('node:fs');
    const shipped = readdirSync(join(ROOT, 'models'), { withFileTypes: true })
      .filter((e) => e.isDirectory() && existsSync(join(ROOT, 'models', e.name, 'model.onnx')))
      .map((e) => `models/${e.name}`);
    expect(bundles.map((b) => b.bundle).sort()).toEqual(shipped.sort());
  });

  it.each(bundles.map((b) => [b.bundle, b] as const))('%s gives its checkpoint\'s PyTorch outputs, and the manifest names its architecture', async (_, b) => {
    const ref = readJson<Reference>(join(FIXTURES, `reference-${b.name}.json`));
    expect(ref.checkpoint).toBe(b.checkpoint);
    const { manifest, session, x, dims } = await referenceInput(join(ROOT, b.bundle), ref);
    expect(manifest.architecture).toBe(ref.architecture);
    try {
      expectReferenceOutputs(await session.run({ input: new ort.Tensor('float32', x, [...dims]) }), manifest.outputs, ref);
      // a different model would be caught: the three reference patches do not all give the same answer
      expect(new Set(ref.abs_um.map((v) => v.toFixed(3))).size).toBeGreaterThan(1);
    } finally {
      await session.release();
    }
  });
});
