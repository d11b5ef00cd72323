import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import cron, { type ScheduledTask } from 'node-cron';
import type { DriftStats, Store } from '../adapters/store.js';
import type { Context } from '../core/context.js';
import type { Component } from '../core/lifecycle.js';
import type { SignLearningState } from '../core/types.js';
import { SignLearner } from './sign-learner.js';

export interface DriftReport {
  schema: 1;
  scanner: string;
  generated_at: string;
  from: string;
  to: string;
  totals: { slides: number; tiles: number; with_tissue: number; out_of_focus: number; out_of_focus_rate: number | null; z_offsets: number };
  alerts: Array<{ slide: string; kind: 'out_of_focus_rate' | 'drift'; value: number; limit: number; message: string }>;
  slides: DriftStats[];
  /** the feedback loop over the period: learned sign per scanner/objective/model, wrong-way moves, stop-loss. */
  loop: {
    wrong_way_moves: number;
    diverging_slides: string[];
    sign_inverted_detected: number;
    slides: Array<{ slide: string; wrong_way_moves: number; loop_diverging: boolean }>;
    sign_learning: SignLearningState[];
  };
}

type ReportStore = Pick<Store, 'driftStats'> & Partial<Pick<Store, 'loopEventCounts' | 'evidenceKeys' | 'loadEvidence'>>;

function loopSection(ctx: Context, store: ReportStore, fromMs: number, toMs: number): DriftReport['loop'] {
  const scanner = ctx.config.scanner.id;
  const ev = store.loopEventCounts?.(fromMs, toMs, scanner) ?? [];
  const per = new Map<string, { slide: string; wrong_way_moves: number; loop_diverging: boolean }>();
  for (const e of ev) {
    const s = per.get(e.slide) ?? { slide: e.slide, wrong_way_moves: 0, loop_diverging: false };
    if (e.kind === 'wrong_way') s.wrong_way_moves += e.n;
    if (e.kind === 'loop_diverging') s.loop_diverging = true;
    per.set(e.slide, s);
  }
  const c = ctx.config.controller;
  // the same posterior the controller uses, from the stored evidence
  const learner = new SignLearner({ trust: c.learning.trust, priorCalibrated: c.learning.priorCalibrated, signConfidence: c.signConfidence }, store.loadEvidence ? { loadEvidence: (k) => store.loadEvidence!(k), addEvidence: () => undefined } : undefined);
  const slides = [...per.values()];
  return {
    wrong_way_moves: slides.reduce((a, s) => a + s.wrong_way_moves, 0),
    diverging_slides: slides.filter((s) => s.loop_diverging).map((s) => s.slide),
    sign_inverted_detected: ev.filter((e) => e.kind === 'sign_inverted_detected').reduce((a, e) => a + e.n, 0),
    slides: slides.filter((s) => s.wrong_way_moves > 0 || s.loop_diverging),
    sign_learning: (store.evidenceKeys?.(scanner) ?? []).map((k) => learner.state(k)),
  };
}

/** Builds the report of [fromMs, toMs) from the tile history. Pure apart from the store query. */
export function buildDriftReport(ctx: Context, store: ReportStore, fromMs: number, toMs: number): DriftReport {
  const { config } = ctx;
  const slides = store.driftStats(fromMs, toMs, config.scanner.id);
  const sum = (f: (s: DriftStats) => number) => slides.reduce((a, s) => a + f(s), 0);
  const withTissue = sum((s) => s.with_tissue);
  const oof = sum((s) => s.out_of_focus);
  const alerts: DriftReport['alerts'] = [];
  for (const s of slides) {
    const rate = s.out_of_focus_rate;
    if (rate !== null && rate > config.reports.outOfFocusAlertRate)
      alerts.push({
        slide: s.slide,
        kind: 'out_of_focus_rate',
        value: rate,
        limit: config.reports.outOfFocusAlertRate,
        message: `${(rate * 100).toFixed(1)} % of tissue tiles out of focus (limit ${(config.reports.outOfFocusAlertRate * 100).toFixed(1)} %)`,
      });
    if (s.drift_um_per_h !== null && Math.abs(s.drift_um_per_h) > config.reports.driftAlertUmPerHour)
      alerts.push({
        slide: s.slide,
        kind: 'drift',
        value: s.drift_um_per_h,
        limit: config.reports.driftAlertUmPerHour,
        message: `focus drifted ${s.drift_um_per_h.toFixed(2)} µm/h (limit ±${config.reports.driftAlertUmPerHour} µm/h)`,
      });
  }
  return {
    schema: 1,
    scanner: config.scanner.id,
    generated_at: new Date().toISOString(),
    from: new Date(fromMs).toISOString(),
    to: new Date(toMs).toISOString(),
    totals: {
      slides: slides.length,
      tiles: sum((s) => s.tiles),
      with_tissue: withTissue,
      out_of_focus: oof,
      out_of_focus_rate: withTissue ? Math.round((oof / withTissue) * 1000) / 1000 : null,
      z_offsets: sum((s) => s.z_offsets),
    },
    alerts,
    slides,
    loop: loopSection(ctx, store, fromMs, toMs),
  };
}

const fmt = (v: number | null, d = 2) => (v === null ? '–' : v.toFixed(d));

export function renderDriftMarkdown(r: DriftReport): string {
  const lines = [
    `# Focus drift report — ${r.scanner}`,
    '',
    `Period: ${r.from} → ${r.to} (generated ${r.generated_at})`,
    '',
    `- slides: ${r.totals.slides}, tiles: ${r.totals.tiles}, with tissue: ${r.totals.with_tissue}`,
    `- out of focus: ${r.totals.out_of_focus} (${r.totals.out_of_focus_rate === null ? '–' : (r.totals.out_of_focus_rate * 100).toFixed(1) + ' %'})`,
    `- z-offset corrections: ${r.totals.z_offsets}`,
    '',
    '## Alerts',
    '',
    ...(r.alerts.length ? r.alerts.map((a) => `- **${a.slide}**: ${a.message}`) : ['None.']),
    '',
    '## Slides',
    '',
    '| slide | tiles | tissue | out of focus | rate | mean defocus µm | mean \\|defocus\\| µm | p95 \\|defocus\\| µm | drift µm/h | z-offsets (total µm) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.slides.map(
      (s) =>
        `| ${s.slide} | ${s.tiles} | ${s.with_tissue} | ${s.out_of_focus} | ${s.out_of_focus_rate === null ? '–' : (s.out_of_focus_rate * 100).toFixed(1) + ' %'} | ${fmt(s.mean_defocus_um)} | ${fmt(s.mean_abs_defocus_um)} | ${fmt(s.p95_abs_defocus_um)} | ${fmt(s.drift_um_per_h)} | ${s.z_offsets} (${fmt(s.z_offset_total_um)}) |`,
    ),
    '',
    '## Feedback loop',
    '',
    `- wrong-way moves: ${r.loop.wrong_way_moves}; slides where the stop-loss fired: ${r.loop.diverging_slides.length ? r.loop.diverging_slides.join(', ') : 'none'}; sign_inverted_detected: ${r.loop.sign_inverted_detected}`,
    ...r.loop.slides.map((s) => `- **${s.slide}**: ${s.wrong_way_moves} wrong-way moves${s.loop_diverging ? ', loop_diverging (z_offsets frozen, signs probed)' : ''}`),
    '',
    "Learned sign of the model (1 = as reported, −1 = reversed, 0 = not known yet, probing):",
    '',
    '| objective | model | calibration | direction | right / wrong per sign-confidence and \\|defocus\\| bin with evidence (P right) |',
    '|---|---|---|---:|---|',
    ...r.loop.sign_learning.map(
      (l) =>
        `| ${l.objective} | ${l.model_sha256.slice(0, 12)} | ${l.calibration_sign}${l.calibrated ? ' (fitted)' : ''} | ${l.direction} | ${l.bins.filter((b) => b.right + b.wrong > 0).map((b) => `${b.lo}–${b.hi} at ${b.abs_lo_um}–${b.abs_hi_um ?? '∞'} µm: ${b.right}/${b.wrong} (${b.p_right.toFixed(2)})`).join('; ')} |`,
    ),
    '',
  ];
  return lines.join('\n');
}

/** Writes drift-<date>.md and .json atomically (temp file + rename) and returns their paths. */
export async function writeDriftReport(dir: string, r: DriftReport): Promise<{ markdown: string; json: string }> {
  await mkdir(dir, { recursive: true });
  const stem = `drift-${r.to.slice(0, 10)}`;
  const out = { markdown: join(dir, `${stem}.md`), json: join(dir, `${stem}.json`) };
  for (const [path, text] of [
    [out.markdown, renderDriftMarkdown(r)],
    [out.json, JSON.stringify(r, null, 2) + '\n'],
  ] as const) {
    await writeFile(`${path}.tmp`, text);
    await rename(`${path}.tmp`, path);
  }
  return out;
}

/** Schedules the nightly report (node-cron). A failed run is logged as an error and retried at the next schedule. */
export class DriftReporter implements Component {
  readonly name = 'reports';
  private task: ScheduledTask | null = null;

  constructor(private readonly ctx: Context, private readonly store: Store) {}

  async start(): Promise<void> {
    const { schedule, timezone } = this.ctx.config.reports;
    if (!schedule) {
      this.ctx.logger.info('scheduled drift reports disabled (reports.schedule is empty)');
      return;
    }
    this.task = cron.schedule(schedule, () => this.runOnce(), {
      name: 'drift-report',
      noOverlap: true,
      ...(timezone ? { timezone } : {}),
    });
    this.ctx.logger.info(`drift reports at "${schedule}"${timezone ? ` (${timezone})` : ''} into ${this.ctx.config.resolved.reportDir}`);
  }

  async runOnce(now = Date.now()): Promise<{ markdown: string; json: string } | null> {
    try {
      const r = buildDriftReport(this.ctx, this.store, now - this.ctx.config.reports.windowHours * 3_600_000, now);
      const files = await writeDriftReport(this.ctx.config.resolved.reportDir, r);
      this.ctx.logger.info(`drift report written: ${files.markdown}`, { slides: r.totals.slides, tiles: r.totals.tiles, alerts: r.alerts.length });
      for (const a of r.alerts) this.ctx.logger.warn(`drift report alert: ${a.slide}: ${a.message}`);
      return files;
    } catch (err) {
      this.ctx.logger.error(`drift report failed: ${(err as Error).message}`, { error: (err as Error).stack });
      return null;
    }
  }

  async stop(): Promise<void> {
    await this.task?.destroy();
    this.task = null;
  }
}
