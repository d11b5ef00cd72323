import type { FocusdConfig } from '../config/load.js';
import type { DaemonEmitter } from './events.js';
import type { Logger } from './logger.js';
import type { Metrics } from './metrics.js';

/** Settings that may change while running (MQTT control requests); everything else is frozen config. */
export interface RuntimeState {
  toleranceUm: number;
  dryRun: boolean;
  paused: boolean;
}

/** One context object handed to every component instead of long argument lists. */
export interface Context {
  readonly config: FocusdConfig;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly events: DaemonEmitter;
  readonly runtime: RuntimeState;
}
