/**
 * TensorFlow.js engine. Backends are tried at run time: tfjs-node-gpu (only when scoring.engine.device is gpu),
 * tfjs-node, then the WebAssembly backend (whose .wasm files are loaded from
 * node_modules/@tensorflow/tfjs-backend-wasm/dist, set explicitly with setWasmPaths). Every failed backend is logged
 * with its reason; a requested GPU that is not used is a loud fallback (warn + 'engine:fallback').
 *
 * tfjs-wasm (and tfjs-node's synchronous kernels) compute on the calling thread, so the model lives in a
 * worker_thread: the event loop only posts the batch (transferred, not copied) and awaits the reply. The worker's
 * source is an eval'd string so the same file works from TypeScript sources (tsx, vitest) and from dist/.
 */
import { createRequire } from 'node:module';
import type { Context } from '../../core/context.js';
import { PACKAGE_ROOT } from '../../config/load.js';
import { type EngineInfo, type EngineModel, type EngineOutputs, type InferenceEngine, reportFallback, type RunOptions, transferable } from './types.js';
import { WorkerRpc } from './worker-rpc.js';

const WORKER_SOURCE = String.raw`
const { parentPort, workerData } = require('node:worker_threads');
const { createRequire } = require('node:module');
const fs = require('node:fs');
const path = require('node:path');
const req = createRequire(workerData.packageJson);
let tf = null;
let model = null;
let graph = false;
let outNames = [];

function loadArtifacts(modelPath) {
  const dir = path.dirname(modelPath);
  const j = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
  const weightSpecs = [];
  const parts = [];
  for (const g of j.weightsManifest || []) {
    weightSpecs.push(...g.weights);
    for (const p of g.paths) parts.push(fs.readFileSync(path.join(dir, p)));
  }
  const all = Buffer.concat(parts);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  return {
    modelTopology: j.modelTopology, format: j.format, generatedBy: j.generatedBy, convertedBy: j.convertedBy,
    trainingConfig: j.trainingConfig, userDefinedMetadata: j.userDefinedMetadata, signature: j.signature,
    modelInitializer: j.modelInitializer, weightSpecs, weightData,
  };
}

async function init(m) {
  const tried = [];
  const candidates = m.device === 'gpu' ? ['tensorflow-gpu', 'tensorflow', 'wasm'] : ['tensorflow', 'wasm'];
  let chosen = null;
  for (const c of candidates) {
    try {
      if (c === 'tensorflow-gpu') { tf = req('@tensorflow/tfjs-node-gpu'); await tf.setBackend('tensorflow'); }
      else if (c === 'tensorflow') { tf = req('@tensorflow/tfjs-node'); await tf.setBackend('tensorflow'); }
      else {
        tf = req('@tensorflow/tfjs');
        const wasm = req('@tensorflow/tfjs-backend-wasm');
        wasm.setWasmPaths(m.wasmDir);
        if (m.threads > 0 && wasm.setThreadsCount) wasm.setThreadsCount(m.threads);
        if (!(await tf.setBackend('wasm'))) throw new Error('tf.setBackend("wasm") returned false');
      }
      await tf.ready();
      chosen = c;
      break;
    } catch (err) {
      tried.push({ backend: c, reason: String((err && err.message) || err).split('\n')[0].slice(0, 300) });
    }
  }
  if (!chosen) throw new Error('no tfjs backend could start: ' + JSON.stringify(tried));
  norm = { scale: m.norm.scale, mean: tf.tensor1d(m.norm.mean), std: tf.tensor1d(m.norm.std) };
  nchw = m.layout === 'NCHW';
  const handler = { load: async () => loadArtifacts(m.modelPath) };
  if (m.format === 'tfjs-graph') {
    graph = true;
    model = await tf.loadGraphModel(handler);
    outNames = model.outputs.map((o) => o.name);
  } else {
    model = await tf.loadLayersModel(handler);
    outNames = model.outputNames.slice();
  }
  return { backend: chosen === 'wasm' ? 'wasm' : chosen === 'tensorflow' ? 'tfjs-node' : 'tfjs-node-gpu', tried, outNames };
}

let norm = null;
let nchw = false;

function runBytes(data, n, h, w) {
  return tf.tidy(() => {
    let x = tf.tensor(data, [n, h, w, 3], 'int32').toFloat().mul(norm.scale).sub(norm.mean).div(norm.std);
    if (nchw) x = x.transpose([0, 3, 1, 2]);
    let y = graph ? model.execute(x, outNames) : model.predict(x);
    if (!Array.isArray(y)) y = [y];
    return y.map((t) => t.dataSync().slice());
  });
}

function run(data, shape) {
  return tf.tidy(() => {
    const x = tf.tensor(data, shape, 'float32');
    let y = graph ? model.execute(x, outNames) : model.predict(x);
    if (!Array.isArray(y)) y = [y];
    return y.map((t) => t.dataSync().slice());
  });
}

parentPort.on('message', async (msg) => {
  try {
    if (msg.type === 'init') parentPort.postMessage({ id: msg.id, ok: true, result: await init(msg) });
    else if (msg.type === 'run') {
      const outs = run(new Float32Array(msg.data, 0, msg.count), msg.shape);
      parentPort.postMessage({ id: msg.id, ok: true, result: { outs, input: msg.data } }, [...outs.map((o) => o.buffer), msg.data]);
    } else if (msg.type === 'runBytes') {
      const outs = runBytes(new Uint8Array(msg.data, 0, msg.count), msg.n, msg.h, msg.w);
      parentPort.postMessage({ id: msg.id, ok: true, result: { outs, input: msg.data } }, [...outs.map((o) => o.buffer), msg.data]);
    }
  } catch (err) {
    parentPort.postMessage({ id: msg.id, ok: false, error: String((err && err.stack) || err) });
  }
});
`;

export class TfjsEngine implements InferenceEngine {
  readonly name = 'engine:tfjs';
  private readonly rpc: WorkerRpc;
  private outIndex: { abs: number; sign: number; logVar: number | null } | null = null;
  private _info: EngineInfo | null = null;

  constructor(private readonly ctx: Context, private readonly model: EngineModel) {
    this.rpc = new WorkerRpc('tfjs worker', ctx.logger);
  }

  get info(): EngineInfo {
    if (!this._info) throw new Error('TfjsEngine: info read before start()');
    return this._info;
  }

  async start(signal: AbortSignal): Promise<void> {
    const { ctx, model } = this;
    const e = ctx.config.scoring.engine;
    const m = model.manifest;
    if (m.format !== 'tfjs-layers' && m.format !== 'tfjs-graph')
      throw new Error(`scoring.engine.type is tfjs but the model bundle ${model.dir} is ${m.format}; use scoring.engine.type=onnx or a tfjs bundle`);
    const req = createRequire(import.meta.url);
    const wasmDir = req.resolve('@tensorflow/tfjs-backend-wasm/package.json').replace(/package\.json$/, 'dist/');
    this.rpc.start(WORKER_SOURCE, { packageJson: `${PACKAGE_ROOT}/package.json` });
    const requested = e.device;
    const r = await this.rpc.call<{ backend: string; tried: Array<{ backend: string; reason: string }>; outNames: string[] }>({
      type: 'init',
      modelPath: model.modelPath,
      format: m.format,
      device: requested,
      threads: e.threads,
      wasmDir,
      norm: m.input.normalisation,
      layout: m.input.layout,
    });
    signal.throwIfAborted();
    for (const t of r.tried) {
      // a missing optional native backend is normal on CPU; a missing GPU backend was asked for, so it is loud
      const level = t.backend === 'tensorflow-gpu' ? 'warn' : 'info';
      ctx.logger.log(level, `inference: tfjs backend ${t.backend === 'tensorflow' ? 'tfjs-node' : t.backend === 'tensorflow-gpu' ? 'tfjs-node-gpu' : t.backend} unavailable: ${t.reason}`);
    }
    const device = r.backend === 'tfjs-node-gpu' ? 'gpu' : 'cpu';
    let fallbackReason: string | null = null;
    if (requested === 'gpu' && device !== 'gpu') {
      fallbackReason = r.tried.find((t) => t.backend === 'tensorflow-gpu')?.reason ?? 'tfjs-node-gpu did not start';
      reportFallback(ctx, 'gpu', `tfjs/${r.backend}`, fallbackReason);
    } else if (requested !== 'gpu' && requested !== 'cpu') {
      fallbackReason = `device "${requested}" is not a tfjs device`;
      reportFallback(ctx, requested, `tfjs/${r.backend}`, fallbackReason);
    }
    const find = (want: string) => {
      const i = r.outNames.findIndex((n) => n === want || n.split(/[:/]/)[0] === want);
      return i < 0 ? null : i;
    };
    const abs = find(m.outputs.abs_um);
    const sign = find(m.outputs.sign_logit);
    if (abs === null || sign === null)
      throw new Error(`${model.modelPath}: outputs ${JSON.stringify(r.outNames)} lack ${m.outputs.abs_um} / ${m.outputs.sign_logit} named in the manifest`);
    this.outIndex = { abs, sign, logVar: m.outputs.log_var ? find(m.outputs.log_var) : null };
    this._info = {
      engine: fallbackReason ? `tfjs/${r.backend} (fallback from ${requested}: ${fallbackReason})` : `tfjs/${r.backend}`,
      requested,
      device,
      fallbackReason,
    };
    ctx.logger.info(
      `inference: tfjs on ${r.backend} in a worker thread (${r.tried.length ? 'first available of ' + [...r.tried.map((t) => t.backend), r.backend].join(' → ') : 'first choice'}), batch ${e.batchSize}`,
      { engine: this._info.engine, model: m.name },
    );
    const [h, wd] = m.input.size;
    const shape = m.input.layout === 'NCHW' ? [e.batchSize, 3, h, wd] : [e.batchSize, h, wd, 3];
    await this.run(new Float32Array(e.batchSize * 3 * h * wd), shape);
  }

  async run(input: Float32Array, shape: number[], opts?: RunOptions): Promise<EngineOutputs> {
    const idx = this.outIndex;
    if (!idx) throw new Error('TfjsEngine: run() before start()');
    const { buf, count } = transferable(input, shape, opts);
    const r = await this.rpc.call<{ outs: Float32Array[]; input: ArrayBuffer }>({ type: 'run', data: buf, count, shape }, [buf]);
    const outs = r.outs;
    return { abs_um: outs[idx.abs]!, sign_logit: outs[idx.sign]!, log_var: idx.logVar === null ? null : outs[idx.logVar]!, returned: r.input };
  }

  async runBytes(patches: Uint8Array, n: number, opts?: RunOptions): Promise<EngineOutputs> {
    const idx = this.outIndex;
    if (!idx) throw new Error('TfjsEngine: runBytes() before start()');
    const [h, w] = this.model.manifest.input.size;
    const { buf, count } = transferable(patches, [n, h, w, 3], opts);
    const r = await this.rpc.call<{ outs: Float32Array[]; input: ArrayBuffer }>({ type: 'runBytes', data: buf, count, n, h, w }, [buf]);
    const outs = r.outs;
    return { abs_um: outs[idx.abs]!, sign_logit: outs[idx.sign]!, log_var: idx.logVar === null ? null : outs[idx.logVar]!, returned: r.input };
  }

  async stop(): Promise<void> {
    await this.rpc.stop();
  }
}
