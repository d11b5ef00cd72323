import { Writable } from 'node:stream';
import { loadConfig } from '../../config/load.js';
import type { Context } from '../../daemon/context.js';
import { TypedEmitter, type DaemonEvents } from '../../daemon/events.js';
import { createLogger } from '../../daemon/logger.js';
import { Metrics } from '../../daemon/metrics.js';

/** A real context (config, winston logger, metrics, events) whose log lines are captured for assertions. */
export function scoringContext(overrides: Record<string, unknown> = {}): { ctx: Context; logs: Array<Record<string, unknown>> } {
  const logs: Array<Record<string, unknown>> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n')) if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  const config = loadConfig({ overrides: { 'scoring.scorer': 'classical', ...overrides }, env: {} });
  const ctx: Context = {
    config,
    logger: createLogger({ level: 'debug', format: 'json', stream }),
    metrics: new Metrics(),
    events: new TypedEmitter<DaemonEvents>(),
    runtime: { toleranceUm: config.decision.toleranceUm, dryRun: false, paused: false },
  };
  return { ctx, logs };
}
