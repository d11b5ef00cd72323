/**
 * Builds the SAME tiny focus network twice, for engine tests: a tfjs LayersModel (saved as model.json + weights.bin
 * through a custom IOHandler, tfjs-node being unavailable) and an ONNX model exported by /usr/bin/python3 + torch
 * from the identical weights. The net is a real, if crude, focus measure: ±Laplacian filters on luminance, ReLU,
 * global mean → |d| = softplus(b − a·sharpness), so blurred patches score higher.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import type { ModelManifest } from '../../models/manifest.js';

export const TINY_PATCH = 64;
export const TINY_PIXEL_UM = 0.44;

const LAP = [
  [0, 1, 0],
  [1, -4, 1],
  [0, 1, 0],
];

function weights() {
  // conv kernel [kh, kw, cin, cout]: +lap and −lap on the channel mean
  const conv: number[][][][] = LAP.map((row) => row.map((v) => [0, 1, 2].map(() => [v / 3, -v / 3])));
  return {
    conv,
    abs: { kernel: [[-25], [-25]], bias: [4] },
    sign: { kernel: [[3], [-3]], bias: [0.2] },
  };
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

const PY = String.raw`
import json, sys, torch, torch.nn as nn, torch.nn.functional as F
w = json.load(open(sys.argv[1]))
slow = len(sys.argv) > 3 and sys.argv[3] == 'slow'
class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), nn.ReLU(), *[m for _ in range(7) for m in (nn.Conv2d(48, 48, 3, padding=1), nn.ReLU())])
        self.abs = nn.Linear(48, 1)
        self.sign = nn.Linear(48, 1)
    def forward(self, x):
        h = self.body(x).mean(dim=(2, 3))
        return F.softplus(self.abs(h)), self.sign(h)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.abs = nn.Linear(2, 1)
        self.sign = nn.Linear(2, 1)
    def forward(self, x):
        h = F.relu(self.conv(x)).mean(dim=(2, 3))
        return F.softplus(self.abs(h)), self.sign(h)
net = (Slow() if slow else Net()).eval()
with torch.no_grad():
  if not slow:
    net.conv.weight.copy_(torch.tensor(w['conv']).permute(3, 2, 0, 1))  # [kh,kw,cin,cout] -> [cout,cin,kh,kw]
    net.abs.weight.copy_(torch.tensor(w['abs']['kernel']).t()); net.abs.bias.copy_(torch.tensor(w['abs']['bias']))
    net.sign.weight.copy_(torch.tensor(w['sign']['kernel']).t()); net.sign.bias.copy_(torch.tensor(w['sign']['bias']))
x = torch.zeros(1, 3, ${TINY_PATCH}, ${TINY_PATCH})
torch.onnx.export(net, x, sys.argv[2], input_names=['input'], output_names=['abs_um', 'sign_logit'],
                  dynamic_axes={'input': {0: 'n'}, 'abs_um': {0: 'n'}, 'sign_logit': {0: 'n'}}, opset_version=13)
`;

/** ONNX bundle in dir (NCHW) with the same weights, exported by torch; slow: an 8-layer 48-channel CNN instead. */
export function writeOnnxBundle(dir: string, sign: ModelManifest['calibration']['sign'] = 'model', slow = false): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'weights.json'), JSON.stringify(weights()));
  writeFileSync(join(dir, 'export.py'), PY);
  execFileSync('/usr/bin/python3', [join(dir, 'export.py'), join(dir, 'weights.json'), join(dir, 'model.onnx'), slow ? 'slow' : 'same'], { stdio: 'pipe', timeout: 120_000 });
  const sha = createHash('sha256').update(readFileSync(join(dir, 'model.onnx'))).digest('hex');
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest('onnx', 'model.onnx', 'NCHW', sha, sign), null, 1));
}
