/**
 * The example drift reports of docs/reports.md and the report benchmark: a simulated history (sim/history.ts:
 * 30 nights × 5 slides, drift ×4 after night 20 unless --quiet) in a real SQLite store, then the reports of the last
 * --reports nights with HTML. Prints the time and size of the last one.
 *
 *   npx tsx scripts/report-example.ts --out /tmp/focusd-reports [--quiet] [--nights 30] [--slides 5] [--reports 3]
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Store } from '../adapters/store.js';
import { loadConfig } from '../config/load.js';
import { createContext } from '../core/context.js';
import { createLogger } from '../core/logger.js';
import { produceReport } from '../daemon/report-run.js';
import { generateHistory } from '../sim/history.js';

const { values } = parseArgs({
  options: {
    out: { type: 'string', default: '/tmp/focusd-report-example' },
    quiet: { type: 'boolean', default: false },
    nights: { type: 'string', default: '30' },
    slides: { type: 'string', default: '5' },
    reports: { type: 'string', default: '3' },
  },
});
const end = Date.parse('2026-11-30T02:00:00Z');
const config = loadConfig({ env: {}, overrides: { 'store.dir': join(values.out!, 'state'), 'scanner.id': 'axioscan-01', 'scoring.scorer': 'classical', 'reports.dir': join(values.out!, 'reports') } });
const ctx = createContext(config, createLogger({ level: 'warn', format: 'pretty', stream: process.stderr }));
const store = new Store(ctx);
await store.start(new AbortController().signal);
const nights = Number(values.nights);
const sim = generateHistory(store, { scanner: 'axioscan-01', end, nights, slidesPerNight: Number(values.slides), changeAfterNight: values.quiet ? null : 20, seed: 12 });
process.stderr.write(`history: ${sim.nights.reduce((a, n) => a + n.tiles, 0)} tiles in ${nights} nights\n`);
const reports = Number(values.reports);
for (let i = reports - 1; i >= 0; i--) {
  const to = end - i * 86_400_000;
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const run = await produceReport(ctx, store, to - 24 * 3_600_000, to, { dir: config.resolved.reportDir, html: true });
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(c0);
  if (i === 0) {
    process.stdout.write(`report ${run.files.html}: ${ms.toFixed(0)} ms wall, ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms CPU, ${(statSync(run.files.html!).size / 1024).toFixed(0)} KiB HTML, ${(statSync(run.files.json).size / 1024).toFixed(0)} KiB JSON\n`);
    for (const a of (run.message.alerts as { message: string }[])) process.stdout.write(`alert: ${a.message}\n`);
  }
}
await store.stop();
