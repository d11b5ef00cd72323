import { PassThrough } from 'node:stream';
import { loadConfig } from '../../config/load.js';
import { createContext, type Context } from '../../core/context.js';
import { createLogger } from '../../core/logger.js';

/**
 * A real daemon context (config with the given overrides, winston logger, metrics, events) for one component under
 * test. The classical scorer is the default here so a test never depends on the model bundle unless it asks.
 * Log lines are captured, parsed, in `logs`.
 */
export function testContext(overrides: Record<string, unknown> = {}): { ctx: Context; logs: Array<Record<string, unknown>> } {
  const config = loadConfig({ env: {}, overrides: { 'scoring.scorer': 'classical', 'log.format': 'json', ...overrides } });
  const stream = new PassThrough();
  const logs: Array<Record<string, unknown>> = [];
  stream.on('data', (d: Buffer) => {
    for (const line of d.toString('utf8').split('\n')) if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>);
  });
  return { ctx: createContext(config, createLogger({ level: 'debug', format: 'json', stream })), logs };
}
