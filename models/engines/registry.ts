import type { Context } from '../../core/context.js';
import { OnnxEngine } from './onnx.js';
import { TfjsEngine } from './tfjs.js';
import type { EngineFactory, EngineModel, EngineType, InferenceEngine } from './types.js';

/** One factory per scoring.engine.type; the mapped type makes a new engine type without a factory a compile error. */
const factories: { [K in EngineType]: EngineFactory } = {
  onnx: (ctx, model) => new OnnxEngine(ctx, model),
  tfjs: (ctx, model) => new TfjsEngine(ctx, model),
};

export function createEngine(ctx: Context, model: EngineModel): InferenceEngine {
  const type = ctx.config.scoring.engine.type;
  const f = factories[type];
  if (!f) throw new Error(`scoring.engine.type: unknown engine "${String(type)}"`);
  return f(ctx, model);
}

export const ENGINE_TYPES = Object.keys(factories) as EngineType[];
