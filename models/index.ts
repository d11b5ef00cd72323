import type { Context } from '../core/context.js';
import { ClassicalScorer } from './classical.js';
import { CnnScorer } from './cnn-scorer.js';
import type { Scorer } from './scorer.js';

/** The scorer selected by scoring.scorer: cnn (bundle from config.resolved.modelDir on scoring.engine.type) or classical. */
export function createScorer(ctx: Context): Scorer {
  const kind = ctx.config.scoring.scorer;
  if (kind === 'classical') return new ClassicalScorer(ctx);
  if (kind === 'cnn') return new CnnScorer(ctx);
  throw new Error(`scoring.scorer: unknown scorer "${String(kind)}"`);
}

export type { Scorer } from './scorer.js';
