/**
 * ONNX Runtime engine (onnxruntime-node), in a worker thread: onnxruntime-node's session.run() returns a promise but
 * runs the whole inference synchronously on the calling thread (setImmediate around a native call), which would
 * freeze ZeroMQ and MQTT for every batch. ORT's intra-op threads still parallelise the work inside the worker.
 *
 * Execution provider from scoring.engine.device: cuda / tensorrt are tried ALONE first, so an unavailable GPU is
 * noticed (ORT would otherwise drop silently to CPU), then CPU with a loud fallback (warn + 'engine:fallback' +
 * the reason in info.engine).
 */
import { resolve } from 'node:path';
import { PACKAGE_ROOT } from '../../config/load.js';
import type { Context } from '../../core/context.js';
import { type EngineInfo, type EngineModel, type EngineOutputs, type InferenceEngine, matchOutput, reportFallback, type RunOptions, transferable } from './types.js';
import { WorkerRpc } from './worker-rpc.js';

const WORKER_SOURCE = String.raw`
const { parentPort, workerData } = require('node:worker_threads');
const { createRequire } = require('node:module');
const ort = createRequire(workerData.packageJson)('onnxruntime-node');
let session = null;
let pre = null;
let norm = null;

async function init(m) {
  // no spinning: idle ORT threads otherwise busy-wait after each run and steal the CPU from the next stage
  // (measured on 2 cores: the preprocessing session's spinning pool doubled the model's batch time)
  const opts = (ep, threads) => Object.assign({
    executionProviders: [ep], graphOptimizationLevel: 'all', executionMode: 'sequential', interOpNumThreads: 1,
    extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } },
  }, threads > 0 ? { intraOpNumThreads: threads } : {});
  let device = 'cpu';
  let fallbackReason = null;
  if (m.device === 'cuda' || m.device === 'tensorrt') {
    try {
      const listed = ort.listSupportedBackends().find((b) => b.name === m.device);
      if (!listed) throw new Error('this onnxruntime-node build has no ' + m.device + ' execution provider');
      session = await ort.InferenceSession.create(m.modelPath, opts(m.device, m.threads));
      device = m.device;
    } catch (err) {
      fallbackReason = String((err && err.message) || err).split('\n')[0].slice(0, 300);
    }
  }
  if (!session) session = await ort.InferenceSession.create(m.modelPath, opts('cpu', m.threads));
  // bytes -> normalised floats, on ORT's threads (scripts/make-preprocess-onnx.py)
  pre = await ort.InferenceSession.create(m.preprocessPath, opts('cpu', m.threads));
  // (x * scale - mean) / std = x * a + b
  const a = Float32Array.from([0, 1, 2].map((c) => m.norm.scale / m.norm.std[c]));
  const b = Float32Array.from([0, 1, 2].map((c) => -m.norm.mean[c] / m.norm.std[c]));
  const abShape = m.layout === 'NCHW' ? [3, 1, 1] : [3];
  norm = { a: new ort.Tensor('float32', a, abShape), b: new ort.Tensor('float32', b, abShape) };
  return { device, fallbackReason, inputNames: session.inputNames, outputNames: session.outputNames,
           supported: ort.listSupportedBackends() };
}

parentPort.on('message', async (msg) => {
  try {
    if (msg.type === 'init') parentPort.postMessage({ id: msg.id, ok: true, result: await init(msg) });
    else if (msg.type === 'run') {
      const feeds = { [msg.input]: new ort.Tensor('float32', new Float32Array(msg.data, 0, msg.count), msg.shape) };
      const r = await session.run(feeds, msg.fetches);
      const outs = msg.fetches.map((k) => Float32Array.from(r[k].data));
      // the input buffer goes back to its owner for reuse
      parentPort.postMessage({ id: msg.id, ok: true, result: { outs, input: msg.data } }, [...outs.map((o) => o.buffer), msg.data]);
    } else if (msg.type === 'runBytes') {
      const x = new ort.Tensor('uint8', new Uint8Array(msg.data, 0, msg.count), [msg.n, msg.h, msg.w, 3]);
      const y = (await pre.run({ x, a: norm.a, b: norm.b })).y;
      const r = await session.run({ [msg.input]: y }, msg.fetches);
      const outs = msg.fetches.map((k) => Float32Array.from(r[k].data));
      parentPort.postMessage({ id: msg.id, ok: true, result: { outs, input: msg.data } }, [...outs.map((o) => o.buffer), msg.data]);
    } else if (msg.type === 'close') {
      if (session) await session.release();
      if (pre) await pre.release();
      session = null;
      pre = null;
      parentPort.postMessage({ id: msg.id, ok: true, result: null });
    }
  } catch (err) {
    parentPort.postMessage({ id: msg.id, ok: false, error: String((err && err.stack) || err) });
  }
});
`;

interface InitResult {
  device: string;
  fallbackReason: string | null;
  inputNames: string[];
  outputNames: string[];
  supported: Array<{ name: string; bundled: boolean }>;
}

export class OnnxEngine implements InferenceEngine {
  readonly name = 'engine:onnx';
  private readonly rpc: WorkerRpc;
  private fetches: string[] | null = null;
  private _info: EngineInfo | null = null;

  constructor(private readonly ctx: Context, private readonly model: EngineModel) {
    this.rpc = new WorkerRpc('onnxruntime worker', ctx.logger);
  }

  get info(): EngineInfo {
    if (!this._info) throw new Error('OnnxEngine: info read before start()');
    return this._info;
  }

  async start(signal: AbortSignal): Promise<void> {
    const { ctx, model } = this;
    const e = ctx.config.scoring.engine;
    const m = model.manifest;
    if (m.format !== 'onnx') throw new Error(`scoring.engine.type is onnx but the model bundle ${model.dir} is ${m.format}; use scoring.engine.type=tfjs or an onnx bundle`);
    this.rpc.start(WORKER_SOURCE, { packageJson: `${PACKAGE_ROOT}/package.json` });
    const requested = e.device;
    const r = await this.rpc.call<InitResult>({
      type: 'init',
      modelPath: model.modelPath,
      preprocessPath: resolve(PACKAGE_ROOT, 'models/engines', m.input.layout === 'NCHW' ? 'preprocess-nchw.onnx' : 'preprocess-nhwc.onnx'),
      norm: m.input.normalisation,
      layout: m.input.layout,
      device: requested,
      threads: e.threads,
    });
    signal.throwIfAborted();
    let why: string;
    let fallbackReason = r.fallbackReason;
    if (fallbackReason) {
      why = `fallback from ${requested}: ${fallbackReason}`;
      reportFallback(ctx, requested, 'cpu', fallbackReason);
    } else if (requested === 'cpu') why = 'scoring.engine.device is cpu';
    else if (r.device === requested) why = `requested by scoring.engine.device and available`;
    else {
      fallbackReason = `device "${requested}" is not an onnx execution provider`;
      why = fallbackReason;
      reportFallback(ctx, requested, 'cpu', fallbackReason);
    }
    const abs = matchOutput(r.outputNames, m.outputs.abs_um);
    const sign = matchOutput(r.outputNames, m.outputs.sign_logit);
    if (!abs || !sign) throw new Error(`${model.modelPath}: outputs ${JSON.stringify(r.outputNames)} lack ${m.outputs.abs_um} / ${m.outputs.sign_logit} named in the manifest`);
    if (!r.inputNames.includes(m.input.name)) throw new Error(`${model.modelPath}: input "${m.input.name}" from the manifest is not among ${JSON.stringify(r.inputNames)}`);
    const logVar = m.outputs.log_var ? matchOutput(r.outputNames, m.outputs.log_var) : undefined;
    this.fetches = logVar ? [abs, sign, logVar] : [abs, sign];
    this._info = {
      engine: fallbackReason ? `onnxruntime/${r.device} (fallback from ${requested}: ${fallbackReason})` : `onnxruntime/${r.device}`,
      requested,
      device: r.device,
      fallbackReason,
    };
    ctx.logger.info(`inference: onnxruntime on ${r.device} (${why}) in a worker thread, threads ${e.threads || 'auto'}, batch ${e.batchSize}`, {
      engine: this._info.engine,
      model: m.name,
      providers: r.supported.map((b) => `${b.name}${b.bundled ? '' : ' (not bundled)'}`),
    });
    // warm-up: the first run allocates arenas and picks kernels; keep that out of the first tile's latency
    const [h, w] = m.input.size;
    const shape = m.input.layout === 'NCHW' ? [e.batchSize, 3, h, w] : [e.batchSize, h, w, 3];
    await this.run(new Float32Array(e.batchSize * 3 * h * w), shape);
  }

  async run(input: Float32Array, shape: number[], opts?: RunOptions): Promise<EngineOutputs> {
    const fetches = this.fetches;
    if (!fetches) throw new Error('OnnxEngine: run() before start()');
    const { buf, count } = transferable(input, shape, opts);
    const r = await this.rpc.call<{ outs: Float32Array[]; input: ArrayBuffer }>(
      { type: 'run', input: this.model.manifest.input.name, data: buf, count, shape, fetches },
      [buf],
    );
    const outs = r.outs;
    return { abs_um: outs[0]!, sign_logit: outs[1]!, log_var: fetches.length > 2 ? outs[2]! : null, returned: r.input };
  }

  async runBytes(patches: Uint8Array, n: number, opts?: RunOptions): Promise<EngineOutputs> {
    const fetches = this.fetches;
    if (!fetches) throw new Error('OnnxEngine: runBytes() before start()');
    const [h, w] = this.model.manifest.input.size;
    const { buf, count } = transferable(patches, [n, h, w, 3], opts);
    const r = await this.rpc.call<{ outs: Float32Array[]; input: ArrayBuffer }>(
      { type: 'runBytes', input: this.model.manifest.input.name, data: buf, count, n, h, w, fetches },
      [buf],
    );
    const outs = r.outs;
    return { abs_um: outs[0]!, sign_logit: outs[1]!, log_var: fetches.length > 2 ? outs[2]! : null, returned: r.input };
  }

  async stop(): Promise<void> {
    await this.rpc.call({ type: 'close' }).catch(() => undefined);
    await this.rpc.stop();
  }
}
