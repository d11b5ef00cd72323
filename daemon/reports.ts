import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import cron, { type ScheduledTask } from 'node-cron';
import type { DriftStats, Store } from '../adapters/store.js';
import type { Context } from '../core/context.js';
import type { Component } from '../core/lifecycle.js';
import { produceReport, type ReportFiles } from './report-run.js';
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
  /**
   * Tiles in the window whose header named another scanner than scanner.id (a second scanner sharing the daemon, or a
   * misconfigured sender): stored and counted here per scanner, not mixed into the slides above.
   */
  other_scanners: Array<{ scanner: string; slides: number; tiles: number; with_tissue: number; out_of_focus: number }>;
  /** the feedback loop over the period: learned sign per scanner/objective/model, wrong-way moves, stop-loss. */
  loop: {
    wrong_way_moves: number;
    diverging_slides: string[];
    sign_inverted_detected: number;
    slides: Array<{ slide: string; wrong_way_moves: number; loop_diverging: boolean }>;
    sign_learning: SignLearningState[];
  };
}

type ReportStore = Pick<Store, 'driftStats'> & Partial<Pick<Store, 'loopEventCounts' | 'evidenceKeys' | 'loadEvidence' | 'loadGain'>>;

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
  const learner = new SignLearner({ trust: c.learning.trust, priorCalibrated: c.learning.priorCalibrated, signConfidence: c.signConfidence, gainMinExperiments: c.learning.gainMinExperiments, zOffsetPriorDamping: c.learning.zOffsetPriorDamping }, store.loadEvidence ? { loadEvidence: (k) => store.loadEvidence!(k), addEvidence: () => undefined, loadGain: store.loadGain ? (k, n) => store.loadGain!(k, n) : undefined } : undefined);
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
  const all = store.driftStats(fromMs, toMs);
  const slides = all.filter((s) => s.scanner === config.scanner.id);
  const others = new Map<string, DriftReport['other_scanners'][number]>();
  for (const s of all) {
    if (s.scanner === config.scanner.id) continue;
    let o = others.get(s.scanner);
    if (!o) others.set(s.scanner, (o = { scanner: s.scanner, slides: 0, tiles: 0, with_tissue: 0, out_of_focus: 0 }));
    o.slides++;
    o.tiles += s.tiles;
    o.with_tissue += s.with_tissue;
    o.out_of_focus += s.out_of_focus;
  }
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
    other_scanners: [...others.values()],
    loop: loopSection(ctx, store, fromMs, toMs),
  };
}

const fmt = (v: number | null, d = 2) => (v === null ? '–' : v.toFixed(d));

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g;

/**
 * Text from a tile header (slide and scanner ids: whatever the sender wrote) for a terminal or a log line: control
 * characters (ESC sequences, NUL, newlines) become U+FFFD, so they can neither recolour the terminal nor fake lines.
 */
export function plainText(s: string): string {
  return s.replace(CONTROL, '\ufffd');
}

/**
 * Header text for a Markdown table cell or list item: plainText, then the characters that end a cell or start markup
 * inside one (|, *, `, [, ], \\) backslash-escaped and &, <, > as entities, so `<script>` is shown, not run.
 */
export function mdText(s: string): string {
  return plainText(s)
    .replace(/&/g, '&amp;')
    .replace(/[\\`*[\]|]/g, (c) => `\\${c}`)
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;');
}

export function renderDriftMarkdown(r: DriftReport): string {
  const lines = [
    `# Focus drift report — ${mdText(r.scanner)}`,
    '',
    `Period: ${r.from} → ${r.to} (generated ${r.generated_at})`,
    '',
    `- slides: ${r.totals.slides}, tiles: ${r.totals.tiles}, with tissue: ${r.totals.with_tissue}`,
    `- out of focus: ${r.totals.out_of_focus} (${r.totals.out_of_focus_rate === null ? '–' : (r.totals.out_of_focus_rate * 100).toFixed(1) + ' %'})`,
    `- z-offset corrections: ${r.totals.z_offsets}`,
    '',
    '## Alerts',
    '',
    ...(r.alerts.length ? r.alerts.map((a) => `- **${mdText(a.slide)}**: ${a.message}`) : ['None.']),
    '',
    '## Slides',
    '',
    '| slide | tiles | tissue | out of focus | rate | mean defocus µm | mean \\|defocus\\| µm | p95 \\|defocus\\| µm | drift µm/h | z-offsets (total µm) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.slides.map(
      (s) =>
        `| ${mdText(s.slide)} | ${s.tiles} | ${s.with_tissue} | ${s.out_of_focus} | ${s.out_of_focus_rate === null ? '–' : (s.out_of_focus_rate * 100).toFixed(1) + ' %'} | ${fmt(s.mean_defocus_um)} | ${fmt(s.mean_abs_defocus_um)} | ${fmt(s.p95_abs_defocus_um)} | ${fmt(s.drift_um_per_h)} | ${s.z_offsets} (${fmt(s.z_offset_total_um)}) |`,
    ),
    '',
    '## Other scanners',
    '',
    ...(r.other_scanners.length
      ? [
          `Tiles whose header names another scanner than ${mdText(r.scanner)} (scanner.id); not included above.`,
          '',
          '| scanner | slides | tiles | tissue | out of focus |',
          '|---|---:|---:|---:|---:|',
          ...r.other_scanners.map((o) => `| ${mdText(o.scanner)} | ${o.slides} | ${o.tiles} | ${o.with_tissue} | ${o.out_of_focus} |`),
        ]
      : ['None: every tile in the period came from this scanner.']),
    '',
    '## Feedback loop',
    '',
    `- wrong-way moves: ${r.loop.wrong_way_moves}; slides where the stop-loss fired: ${r.loop.diverging_slides.length ? r.loop.diverging_slides.join(', ') : 'none'}; sign_inverted_detected: ${r.loop.sign_inverted_detected}`,
    ...r.loop.slides.map((s) => `- **${s.slide}**: ${s.wrong_way_moves} wrong-way moves${s.loop_diverging ? ', loop_diverging (signs probed, z_offsets only from probes)' : ''}`),
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

  constructor(
    private readonly ctx: Context,
    private readonly store: Store,
    /** announces a written report (MqttAdapter.publishReport); a failed announcement is logged, the files stay. */
    private readonly deps: { publish?: (message: Record<string, unknown>) => Promise<void> } = {},
  ) {}

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

  async runOnce(now = Date.now()): Promise<ReportFiles | null> {
    try {
      const { config } = this.ctx;
      const run = await produceReport(this.ctx, this.store, now - config.reports.windowHours * 3_600_000, now, { dir: config.resolved.reportDir, html: config.reports.html });
      const { report: r, files } = run;
      // not awaited: with the broker away the QoS 1 message waits in MQTT.js's queue, the next run must not
      if (this.deps.publish)
        void this.deps.publish(run.message).catch((err: Error) => this.ctx.logger.error(`drift report written but not announced on MQTT: ${err.message}`));
      this.ctx.logger.info(`drift report written: ${files.markdown}`, { slides: r.totals.slides, tiles: r.totals.tiles, alerts: r.alerts.length });
      for (const a of r.alerts) this.ctx.logger.warn(`drift report alert: ${plainText(a.slide)}: ${a.message}`);
      for (const o of r.other_scanners)
        this.ctx.logger.warn(`drift report: ${o.tiles} tiles from scanner ${plainText(o.scanner)} (not scanner.id) are reported separately`);
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
