/**
 * One report run, shared by the nightly job (DriftReporter) and `focusd report`: the Markdown and JSON of
 * daemon/reports.ts, with `html` also the detailed JSON, the HTML page and the index, and the `report` message
 * (docs/mqtt.md, docs/schemas/report.schema.json) that announces them.
 */
import type { Store } from '../adapters/store.js';
import type { Context } from '../core/context.js';
import { detailReport, type DetailedReport } from './report-details.js';
import { writeDriftHtml, writeReportIndex } from './report-html.js';
import { buildDriftReport, writeDriftReport, type DriftReport } from './reports.js';

export const REPORT_SCHEMA_ID = 'focusd/report/1';

export interface ReportFiles {
  markdown: string;
  json: string;
  html?: string;
  index?: string;
}

export interface ReportRun {
  report: DriftReport | DetailedReport;
  files: ReportFiles;
  message: Record<string, unknown>;
}

type ReportStore = Pick<Store, 'driftStats' | 'reportTiles' | 'reportActions' | 'reportRefusals'>;

export async function produceReport(ctx: Context, store: ReportStore, fromMs: number, toMs: number, opts: { dir: string; html: boolean }): Promise<ReportRun> {
  const base = buildDriftReport(ctx, store, fromMs, toMs);
  const report = opts.html ? detailReport(ctx, store, base, fromMs, toMs) : base;
  // writeDriftReport serialises the whole object: the detailed report's JSON carries everything the page shows
  const files: ReportFiles = await writeDriftReport(opts.dir, report);
  if (opts.html) {
    files.html = await writeDriftHtml(opts.dir, report as DetailedReport, { toleranceUm: ctx.runtime.toleranceUm });
    files.index = await writeReportIndex(opts.dir, ctx.config.scanner.id);
  }
  return { report, files, message: reportMessage(report, files) };
}

/** The `<base>/report` message: period, headline figures, alerts, file paths. */
export function reportMessage(r: DriftReport | DetailedReport, files: ReportFiles): Record<string, unknown> {
  const d = 'actions' in r ? (r as DetailedReport) : null;
  return {
    schema: REPORT_SCHEMA_ID,
    scanner: r.scanner,
    at: new Date().toISOString(),
    period: { from: r.from, to: r.to },
    headline: {
      slides: r.totals.slides,
      tiles: r.totals.tiles,
      with_tissue: r.totals.with_tissue,
      out_of_focus: r.totals.out_of_focus,
      out_of_focus_rate: r.totals.out_of_focus_rate,
      z_offsets: r.totals.z_offsets,
      ...(d ? { reacquisitions: d.actions.reacquisitions, probes: d.actions.probes, refused: d.actions.refused, expired: d.actions.expired } : {}),
    },
    alerts: [
      ...r.alerts.map((a) => ({ kind: a.kind, slide: a.slide, message: a.message })),
      ...(d ? d.trend.alerts.map((a) => ({ kind: a.kind, metric: a.metric, since: a.since, message: a.message })) : []),
    ],
    files,
  };
}
