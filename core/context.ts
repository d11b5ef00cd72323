import type { FocusdConfig } from '../config/load.js';
import { TypedEmitter, type DaemonEmitter, type DaemonEvents } from './events.js';
import type { Logger } from './logger.js';
import { Metrics } from './metrics.js';

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

/** A fresh context: new counters, a new event bus, runtime settings from the config. */
export function createContext(config: FocusdConfig, logger: Logger): Context {
  return {
    config,
    logger,
    metrics: new Metrics(),
    events: new TypedEmitter<DaemonEvents>(),
    runtime: { toleranceUm: config.decision.toleranceUm, dryRun: config.controller.dryRun, paused: false },
  };
}
