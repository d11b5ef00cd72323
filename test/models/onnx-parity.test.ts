// The ONNX export gives the same numbers in onnxruntime-node as the model gives in PyTorch.
// Runs the real Python exporter (Debian /usr/bin/python3 with torch) on a tiny seeded, untrained model.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBundle } from '../../models/bundle.js';

const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '..', '..');
// float32 kernels differ in summation order between PyTorch and onnxruntime: allow 1e-4 absolute + 1e-4 relative
const ATOL = 1e-4;
const RTOL = 1e-4;

interface Reference {
  shape: [number, number, number, number];
  input_u8: number[];
  abs_um: number[];
  sign_logit: number[];
  log_var: number[];
}

/** Normalises the reference's 8-bit input exactly as the daemon does (from the manifest) and opens the model. */
async function referenceInput(bundleDir: string, ref: Reference) {
  const { manifest, modelPath } = await loadBundle(bundleDir);
  const [n, c, h, w] = ref.shape;
  const { scale, mean, std } = manifest.input.normalisation;
  const x = new Float32Array(n * c * h * w);
  for (let i = 0; i < x.length; i++) {
    const ch = Math.floor(i / (h * w)) % c;
    x[i] = (ref.input_u8[i]! * scale - mean[ch]!) / std[ch]!;
  }
  const session = await ort.InferenceSession.create(modelPath, { intraOpNumThreads: 1 });
  return { manifest, session, x, dims: [n, c, h, w] as const };
}

function expectReferenceOutputs(out: ort.InferenceSession.OnnxValueMapType, outputs: Record<string, string>, ref: Reference) {
  for (const name of ['abs_um', 'sign_logit', 'log_var'] as const) {
    const got = Array.from(out[outputs[name] ?? name]!.data as Float32Array);
    expect(got).toHaveLength(ref.shape[0]);
    got.forEach((g, i) => expect(Math.abs(g - ref[name][i]!)).toBeLessThanOrEqual(ATOL + RTOL * Math.abs(ref[name][i]!)));
  }
}

describe('ONNX export parity (PyTorch vs onnxruntime-node)', () => {
  let dir: string;
  let ref: Reference;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'focusd-parity-'));
    await run('/usr/bin/python3', [join(ROOT, 'models/training/export_onnx.py'), '--random-init', '--arch', 'focusnet', '--width', '4', '--depth', '2',
      '--seed', '7', '--out', dir, '--reference', join(dir, 'reference.json'), '--reference-n', '3'], { timeout: 120_000 });
    ref = JSON.parse(await readFile(join(dir, 'reference.json'), 'utf8')) as Reference;
  }, 150_000);
  afterAll(async () => rm(dir, { recursive: true, force: true }));

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
// ONNX file. This ties the two: the shipped model.onnx answers what the checkpoint answers in PyTorch.
describe('the shipped bundle is the committed checkpoint', () => {
  const CHECKPOINT = join(ROOT, 'models/training/checkpoints/focusnet-w32d2-0.2.0.pt');
  let dir: string;
  let ref: Reference;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'focusd-shipped-'));
    await run('/usr/bin/python3', [join(ROOT, 'models/training/export_onnx.py'), '--checkpoint', CHECKPOINT, '--out', dir,
      '--reference', join(dir, 'reference.json'), '--reference-n', '3'], { timeout: 120_000 });
    ref = JSON.parse(await readFile(join(dir, 'reference.json'), 'utf8')) as Reference;
  }, 150_000);
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('models/default/model.onnx gives the checkpoint\'s PyTorch outputs, and the manifest names its architecture', async () => {
    const { manifest, session, x, dims } = await referenceInput(join(ROOT, 'models/default'), ref);
    expect(manifest.architecture).toBe((await loadBundle(dir)).manifest.architecture);
    try {
      expectReferenceOutputs(await session.run({ input: new ort.Tensor('float32', x, [...dims]) }), manifest.outputs, ref);
      // a different model would be caught: the three reference patches do not all give the same answer
      expect(new Set(ref.abs_um.map((v) => v.toFixed(3))).size).toBeGreaterThan(1);
    } finally {
      await session.release();
    }
  });
});
