/**
 * ONNX Runtime engine (onnxruntime-node). Execution provider from scoring.engine.device: cuda / tensorrt are tried
 * ALONE first so that an unavailable GPU is noticed (ORT would otherwise drop silently to CPU), then CPU with a loud
 * fallback. session.run() is asynchronous and runs on ORT's own thread pool, so the event loop stays free.
 */
import type * as Ort from 'onnxruntime-node';
import type { Context } from '../../daemon/context.js';
import { type EngineInfo, type EngineModel, type EngineOutputs, type InferenceEngine, matchOutput, reportFallback } from './types.js';

export class OnnxEngine implements InferenceEngine {
  readonly name = 'engine:onnx';
  private ort: typeof Ort | null = null;
  private session: Ort.InferenceSession | null = null;
  private names: { abs: string; sign: string; logVar: string | null } | null = null;
  private _info: EngineInfo | null = null;

  constructor(private readonly ctx: Context, private readonly model: EngineModel) {}

  get info(): EngineInfo {
    if (!this._info) throw new Error('OnnxEngine: info read before start()');
    return this._info;
  }

  async start(signal: AbortSignal): Promise<void> {
    const { ctx, model } = this;
    const e = ctx.config.scoring.engine;
    const ort = (await import('onnxruntime-node')) as typeof Ort;
    this.ort = ort;
    const opts = (ep: string): Ort.InferenceSession.SessionOptions => ({
      executionProviders: [ep],
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      // 0 = let ORT use all cores; inter-op parallelism buys nothing for a sequential CNN
      ...(e.threads > 0 ? { intraOpNumThreads: e.threads } : {}),
      interOpNumThreads: 1,
    });
    const requested = e.device;
    let device = 'cpu';
    let fallbackReason: string | null = null;
    let why: string;
    if (requested === 'cuda' || requested === 'tensorrt') {
      const listed = ort.listSupportedBackends().find((b) => b.name === requested);
      try {
        if (!listed) throw new Error(`this onnxruntime-node build has no ${requested} execution provider`);
        this.session = await ort.InferenceSession.create(model.modelPath, opts(requested));
        device = requested;
        why = `requested by scoring.engine.device and available`;
      } catch (err) {
        fallbackReason = (err as Error).message.split('\n')[0]!.slice(0, 300);
        why = `fallback from ${requested}: ${fallbackReason}`;
        reportFallback(ctx, requested, 'cpu', fallbackReason);
      }
    } else {
      why = requested === 'cpu' ? 'scoring.engine.device is cpu' : `device "${requested}" is not an onnx execution provider`;
    }
    signal.throwIfAborted();
    if (!this.session) this.session = await ort.InferenceSession.create(model.modelPath, opts('cpu'));
    const m = model.manifest;
    const outs = this.session.outputNames;
    const abs = matchOutput(outs, m.outputs.abs_um);
    const sign = matchOutput(outs, m.outputs.sign_logit);
    if (!abs || !sign) throw new Error(`${model.modelPath}: outputs ${JSON.stringify(outs)} lack ${m.outputs.abs_um} / ${m.outputs.sign_logit} named in the manifest`);
    const logVar = m.outputs.log_var ? (matchOutput(outs, m.outputs.log_var) ?? null) : null;
    if (!this.session.inputNames.includes(m.input.name))
      throw new Error(`${model.modelPath}: input "${m.input.name}" from the manifest is not among ${JSON.stringify(this.session.inputNames)}`);
    this.names = { abs, sign, logVar };
    this._info = {
      engine: fallbackReason ? `onnxruntime/${device} (fallback from ${requested}: ${fallbackReason})` : `onnxruntime/${device}`,
      requested,
      device,
      fallbackReason,
    };
    ctx.logger.info(`inference: onnxruntime on ${device} (${why}), threads ${e.threads || 'auto'}, batch ${e.batchSize}`, {
      engine: this._info.engine,
      model: m.name,
    });
    // warm-up: first run allocates arenas and picks kernels; keep that out of the first tile's latency
    const [h, w] = m.input.size;
    const shape = m.input.layout === 'NCHW' ? [e.batchSize, 3, h, w] : [e.batchSize, h, w, 3];
    await this.run(new Float32Array(e.batchSize * 3 * h * w), shape);
  }

  async run(input: Float32Array, shape: number[]): Promise<EngineOutputs> {
    const { ort, session, names } = this;
    if (!ort || !session || !names) throw new Error('OnnxEngine: run() before start()');
    const feeds = { [this.model.manifest.input.name]: new ort.Tensor('float32', input, shape) };
    const fetches = names.logVar ? [names.abs, names.sign, names.logVar] : [names.abs, names.sign];
    const r = await session.run(feeds, fetches);
    const f = (k: string) => Float32Array.from(r[k]!.data as Float32Array);
    return { abs_um: f(names.abs), sign_logit: f(names.sign), log_var: names.logVar ? f(names.logVar) : null };
  }

  async stop(): Promise<void> {
    const s = this.session;
    this.session = null;
    if (s) await s.release();
  }
}
