import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Store } from '../adapters/store.js';
import { createContext } from '../core/context.js';
import { createLogger } from '../core/logger.js';
import { produceReport } from '../daemon/report-run.js';
import { renderDriftMarkdown } from '../daemon/reports.js';
import { loadCommandConfig, splitConfigArgs } from './args.js';

/**
 * `focusd report`: the drift report of the history on demand (the daemon writes one nightly on its own).
 * Exit codes: 0 written, 64 usage, 66 (EX_NOINPUT) no history where the configuration points, 78 bad config.
 */
export async function reportMain(argv: string[]): Promise<number> {
  let split, values;
  try {
    split = splitConfigArgs(argv);
    values = parseArgs({
      args: split.rest,
      options: {
        from: { type: 'string' },
        to: { type: 'string' },
        out: { type: 'string' },
        json: { type: 'boolean', default: false },
        html: { type: 'boolean', default: false },
        help: { type: 'boolean' },
      },
    }).values;
  } catch (err) {
    process.stderr.write(`focusd report: ${(err as Error).message}\n`);
    return 64;
  }
  if (values.help) {
    process.stdout.write('usage: focusd report [--config FILE] [--from ISO] [--to ISO] [--out DIR] [--json] [--html]\n  default period: the last reports.windowHours hours\n  --html  also write drift-<date>.html (charts, trend of reports.trendNights nights, change alerts) and index.html\n');
    return 0;
  }
  const config = loadCommandConfig('report', split);
  if (typeof config === 'number') return config;
  // ISO-8601 dates only: Date.parse reads "0" as the year 2000 and "5" as May
  const iso = (s: string) => (/^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(s.trim()) ? Date.parse(s) : Number.NaN);
  const to = values.to ? iso(values.to) : Date.now();
  const from = values.from ? iso(values.from) : to - config.reports.windowHours * 3_600_000;
  if (!Number.isFinite(from) || !Number.isFinite(to) || from >= to) {
    process.stderr.write('focusd report: --from and --to must be ISO-8601 dates or times (2026-12-01, 2026-12-01T06:00Z) with --from before --to\n');
    return 64;
  }
  const ctx = createContext(config, createLogger({ level: 'warn', format: 'pretty', stream: process.stderr }));
  const store = new Store(ctx);
  // a report reads the daemon's history: never create an empty one (a wrong or missing --config would report
  // "nothing happened" from a new file in the current directory)
  if (!existsSync(store.file)) {
    process.stderr.write(
      `focusd report: no tile history at ${store.file} (store.dir${config.store.dir ? '' : ' unset: $STATE_DIRECTORY, else ./var'}); ` +
        `pass the daemon's configuration (--config /etc/focusd/focusd.yaml) or FOCUSD_STATE_DIR (systemd: /var/lib/focusd)\n`,
    );
    return 66;
  }
  await store.start(new AbortController().signal);
  try {
    const { report: r, files } = await produceReport(ctx, store, from, to, { dir: values.out ?? config.resolved.reportDir, html: values.html });
    if (r.totals.tiles === 0) {
      // an empty report of the configured scanner while the history holds another's is a wrong scanner.id, not a quiet night
      const others = new Map<string, number>();
      for (const s of store.driftStats(from, to)) others.set(s.scanner, (others.get(s.scanner) ?? 0) + s.tiles);
      if (others.size > 0) {
        const list = [...others].map(([id, n]) => `${JSON.stringify(id)} (${n} tiles)`).join(', ');
        process.stderr.write(
          `focusd report: no tiles of scanner ${JSON.stringify(config.scanner.id)} (scanner.id) in ${r.from} .. ${r.to}, but the history in ` +
            `${config.resolved.stateDir} holds tiles of ${list}; report on one with --config FILE or FOCUSD_SCANNER_ID=<id>\n`,
        );
      }
    }
    // Markdown: header text is escaped and stripped of control characters (mdText); JSON escapes C0 itself, C1
    // (U+009B is a CSI to some terminals) and line separators are escaped here
    const json = () => JSON.stringify(r, null, 2).replace(/[\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
    process.stdout.write(values.json ? json() + '\n' : renderDriftMarkdown(r));
    process.stderr.write(`written: ${Object.values(files).join(', ')}\n`);
    return 0;
  } finally {
    await store.stop();
  }
}
