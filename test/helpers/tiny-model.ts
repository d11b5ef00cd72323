/**
 * Builds the SAME tiny focus network twice, for engine tests: a tfjs LayersModel (saved as model.json + weights.bin
 * through a custom IOHandler, tfjs-node being unavailable) and an ONNX model that PyTorch exported from the identical
 * weights (committed: test/fixtures/tiny/). The net is a real, if crude, focus measure: ±Laplacian filters on luminance, ReLU,
 * global mean → |d| = softplus(b − a·sharpness), so blurred patches score higher.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { ModelManifest } from '../../models/manifest.js';
import { ROOT } from './proc.js';

const FIXTURES = join(ROOT, 'test', 'fixtures', 'tiny');

export const TINY_PATCH = 64;
export const TINY_PIXEL_UM = 0.44;

/** conv kernel [kh, kw, cin, cout]: +lap and −lap on the channel mean; dense heads. Shared with the ONNX export. */
function weights(): { conv: number[][][][]; abs: { kernel: number[][]; bias: number[] }; sign: { kernel: number[][]; bias: number[] } } {
  return JSON.parse(readFileSync(join(FIXTURES, 'weights.json'), 'utf8'));
}

function manifest(format: ModelManifest['format'], file: string, layout: 'NCHW' | 'NHWC', sha: string, sign: ModelManifest['calibration']['sign'] = 'model'): ModelManifest {
  return {
    schema: 1,
    name: 'tiny-laplacian',
    version: '0.0.1-test',
    architecture: 'laplacian energy + dense (test model)',
    format,
    file,
    sha256: sha,
    input: {
      name: 'input',
      layout,
      size: [TINY_PATCH, TINY_PATCH],
      channel_order: 'RGB',
      pixel_size_um: TINY_PIXEL_UM,
      normalisation: { scale: 1 / 255, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25] },
    },
    outputs: { abs_um: 'abs_um', sign_logit: 'sign_logit' },
    output_semantics: 'test model',
    range_um: [0, 20],
    calibration: { slope: 1, intercept: 0, sign, source: 'test' },
  };
}

/**
 * A deliberately slow tfjs model (6 conv layers of 32 channels, seeded random weights) with the same inputs and
 * outputs, for event-loop tests.
 */
export async function writeSlowTfjsBundle(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const inp = tf.input({ shape: [TINY_PATCH, TINY_PATCH, 3], name: 'input' });
  let x: tf.SymbolicTensor = inp;
  for (let i = 0; i < 6; i++)
    x = tf.layers.conv2d({ filters: 32, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: i + 1 }) }).apply(x) as tf.SymbolicTensor;
  const h = tf.layers.globalAveragePooling2d({}).apply(x) as tf.SymbolicTensor;
  const a = tf.layers.dense({ units: 1, activation: 'softplus', name: 'abs_um', kernelInitializer: tf.initializers.glorotUniform({ seed: 11 }) }).apply(h) as tf.SymbolicTensor;
  const sg = tf.layers.dense({ units: 1, name: 'sign_logit', kernelInitializer: tf.initializers.glorotUniform({ seed: 12 }) }).apply(h) as tf.SymbolicTensor;
  await saveLayers(tf.model({ inputs: inp, outputs: [a, sg] }), dir);
}

async function saveLayers(model: tf.LayersModel, dir: string): Promise<void> {
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      writeFileSync(join(dir, 'weights.bin'), Buffer.from(a.weightData as ArrayBuffer));
      writeFileSync(
        join(dir, 'model.json'),
        JSON.stringify({ modelTopology: a.modelTopology, format: 'layers-model', generatedBy: a.generatedBy, convertedBy: null, weightsManifest: [{ paths: ['weights.bin'], weights: a.weightSpecs }] }),
      );
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
  const sha = createHash('sha256').update(readFileSync(join(dir, 'model.json'))).digest('hex');
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest('tfjs-layers', 'model.json', 'NHWC', sha), null, 1));
}

/** tfjs bundle in dir (NHWC). */
export async function writeTfjsBundle(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const w = weights();
  const inp = tf.input({ shape: [TINY_PATCH, TINY_PATCH, 3], name: 'input' });
  const conv = tf.layers.conv2d({ filters: 2, kernelSize: 3, padding: 'same', useBias: false, activation: 'relu', name: 'lap' });
  const gap = tf.layers.globalAveragePooling2d({ name: 'gap' });
  const absL = tf.layers.dense({ units: 1, activation: 'softplus', name: 'abs_um' });
  const signL = tf.layers.dense({ units: 1, name: 'sign_logit' });
  const h = gap.apply(conv.apply(inp)) as tf.SymbolicTensor;
  const model = tf.model({ inputs: inp, outputs: [absL.apply(h) as tf.SymbolicTensor, signL.apply(h) as tf.SymbolicTensor] });
  conv.setWeights([tf.tensor4d(w.conv)]);
  absL.setWeights([tf.tensor2d(w.abs.kernel), tf.tensor1d(w.abs.bias)]);
  signL.setWeights([tf.tensor2d(w.sign.kernel), tf.tensor1d(w.sign.bias)]);
  await saveLayers(model, dir);
}

/**
 * ONNX bundle in dir (NCHW) with the same weights as the tfjs one; slow: an 8-layer 48-channel CNN instead. The ONNX
 * files are committed (test/fixtures/tiny/, exported by PyTorch in test/fixtures/make_fixtures.py from
 * tiny/weights.json), so no test needs Python.
 */
export function writeOnnxBundle(dir: string, sign: ModelManifest['calibration']['sign'] = 'model', slow = false): void {
  mkdirSync(dir, { recursive: true });
  copyFileSync(join(FIXTURES, slow ? 'slow.onnx' : 'laplacian.onnx'), join(dir, 'model.onnx'));
  const sha = createHash('sha256').update(readFileSync(join(dir, 'model.onnx'))).digest('hex');
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest('onnx', 'model.onnx', 'NCHW', sha, sign), null, 1));
}
