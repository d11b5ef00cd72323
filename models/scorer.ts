import type { Component } from '../core/lifecycle.js';
import type { DecodedTile, ModelInfo, ScoreResult } from '../core/types.js';

/**
 * Rates one decoded tile. Implementations: classical (models/classical.ts) and cnn (models/cnn-scorer.ts,
 * running a model bundle on an engine from models/engines). start() loads and warms up; score() must not
 * block the event loop for long (heavy work runs in native thread pools or worker threads).
 */
export interface Scorer extends Component {
  /** valid after start(). */
  readonly info: ModelInfo;
  score(tile: DecodedTile): Promise<ScoreResult>;
}
