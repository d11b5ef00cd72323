// The daemon under benchmark, in its own process so its CPU time and RSS are its own. Driven by bench/run.ts over IPC.
import { loadConfig } from '../config/load.js';
import { Daemon } from '../daemon/daemon.js';
import { createLogger } from '../core/logger.js';

const overrides = JSON.parse(process.argv[2] ?? '{}') as Record<string, unknown>;
const config = loadConfig({ overrides, env: {} });
const daemon = new Daemon(config, { logger: createLogger({ level: 'warn', format: 'json', stream: process.stderr }), env: {} });

function send(msg: Record<string, unknown>): void {
  process.send?.(msg);
}

process.on('message', (m: { type: string; id?: number }) => {
  if (m.type === 'usage') {
    send({ type: 'usage', id: m.id, ru: process.resourceUsage(), rss: process.memoryUsage().rss, metrics: daemon.ctx.metrics.snapshot() });
  } else if (m.type === 'stop') {
    void daemon.stop('bench done').then(() => process.exit(0));
  }
});

daemon
  .start()
  .then(() => {
    const st = daemon.status();
    send({ type: 'ready', endpoint: daemon.ingestEndpoint, engine: st.engine, model: st.model });
  })
  .catch((err: Error) => {
    send({ type: 'failed', error: err.stack ?? String(err) });
    process.exit(1);
  });
