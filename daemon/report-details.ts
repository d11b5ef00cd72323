/**
 * What the HTML report shows beyond the Markdown one, computed from the history of the report's window: what the
 * loop did (re-acquisitions, probes, z-offsets, refused and expired actions, by rule), the models that scored,
 * per slide the focus maps (first and final acquisition per tile position), defocus along the scan, the fitted focus
 * surface, and the trend across nights. It all goes into the report JSON, so the page shows nothing the JSON lacks.
 */
import type { ReportActionRow, ReportTileRow, Store } from '../adapters/store.js';
import type { Context } from '../core/context.js';
import { evaluate, FocusSurface } from './focus-surface.js';
import { buildTrend, type Trend } from './report-trend.js';
import type { DriftReport } from './reports.js';

export interface LoopFigures {
  /** tiles acquired again (attempt > 0). */
  reacquisitions: number;
  reacquire_actions: number;
  probes: number;
  z_offsets: number;
  z_offset_total_um: number;
  refused: number;
  refused_by_limit: Record<string, number>;
  expired: number;
  dry_run: number;
  pending: number;
  /** actions by controller rule (isolated, probe, probe_result, retry, drift, tilt, …, and whatever later rules add). */
  by_rule: Record<string, number>;
}

export interface SurfaceSummary {
  model: 'plane' | 'quadratic';
  points: number;
  outliers: number;
  rms_um: number;
  tilt_um_per_mm: { x: number; y: number };
  /** second derivatives of best-focus z, µm per mm². */
  curvature_um_per_mm2: { xx: number; xy: number; yy: number };
  /** peak-to-valley of the fitted surface over the slide's tiles. */
  pv_um: number;
  /** [row, col, fitted best-focus z relative to the slide's mean, µm] per final tile position. */
  grid: [number, number, number][];
}

export interface SlideDetail {
  slide: string;
  rows: number;
  cols: number;
  /** [row, col, defocus µm] of the first acquisition of each tile position with tissue. */
  first: [number, number, number][];
  /** [row, col, defocus µm] of the last acquisition of each tile position with tissue. */
  final: [number, number, number][];
  /** [minutes since the slide's first tile, defocus µm, attempt] of every scored tile with tissue, in scan order. */
  scan: [number, number, number][];
  /** [minutes, z-offset µm] of every z-offset correction sent for the slide. */
  z_offsets: [number, number][];
  surface: SurfaceSummary | null;
  actions: LoopFigures;
}

export interface DetailedReport extends DriftReport {
  actions: LoopFigures;
  models: string[];
  trend: Trend;
  details: SlideDetail[];
}

const r3 = (v: number) => Math.round(v * 1000) / 1000;

function loopFigures(tiles: ReportTileRow[], actions: ReportActionRow[], refusals: { limit: string; n: number }[]): LoopFigures {
  const live = actions.filter((a) => !a.dry_run);
  const by_rule: Record<string, number> = {};
  for (const a of live) if (a.rule) by_rule[a.rule] = (by_rule[a.rule] ?? 0) + 1;
  const refused_by_limit: Record<string, number> = {};
  for (const r of refusals) refused_by_limit[r.limit] = (refused_by_limit[r.limit] ?? 0) + r.n;
  const zs = live.filter((a) => a.type === 'z_offset' && a.status !== 'expired');
  return {
    reacquisitions: tiles.filter((t) => t.attempt > 0).length,
    reacquire_actions: live.filter((a) => a.type === 'reacquire').length,
    probes: live.filter((a) => a.probe).length,
    z_offsets: zs.length,
    z_offset_total_um: r3(zs.reduce((s, a) => s + a.z_offset_um, 0)),
    refused: refusals.reduce((s, r) => s + r.n, 0),
    refused_by_limit,
    expired: actions.filter((a) => a.status === 'expired').length,
    dry_run: actions.filter((a) => a.dry_run).length,
    pending: actions.filter((a) => a.status === 'queued').length,
    by_rule,
  };
}

function surfaceOf(finals: ReportTileRow[]): SurfaceSummary | null {
  const fs = new FocusSurface({ minPointsPlane: 4, minPointsQuadratic: 7, maxPoints: Number.MAX_SAFE_INTEGER });
  for (const t of finals) if (t.defocus_um !== null) fs.add(t.x_um, t.y_um, t.z_um - t.defocus_um);
  const f = fs.fit();
  if (!f) return null;
  const zs = finals.map((t) => evaluate(f, t.x_um, t.y_um));
  const mean = zs.reduce((a, b) => a + b, 0) / zs.length;
  const s2 = f.scale * f.scale;
  return {
    model: f.model,
    points: f.points,
    outliers: f.outliers,
    rms_um: r3(f.rms_um),
    tilt_um_per_mm: { x: r3(f.tilt_um_per_mm.x), y: r3(f.tilt_um_per_mm.y) },
    curvature_um_per_mm2: { xx: r3(((2 * f.coef[3]!) / s2) * 1e6), xy: r3((f.coef[4]! / s2) * 1e6), yy: r3(((2 * f.coef[5]!) / s2) * 1e6) },
    pv_um: r3(Math.max(...zs) - Math.min(...zs)),
    grid: finals.map((t, i) => [t.tile_row, t.tile_col, r3(zs[i]! - mean)]),
  };
}

function slideDetail(slide: string, tiles: ReportTileRow[], actions: ReportActionRow[], refusals: { limit: string; n: number }[]): SlideDetail {
  const t0 = tiles[0]?.at ?? 0;
  const min = (at: number) => r3((at - t0) / 60_000);
  const first = new Map<number, ReportTileRow>();
  const final = new Map<number, ReportTileRow>();
  for (const t of tiles) {
    if (t.attempt === 0 && !first.has(t.tile_index)) first.set(t.tile_index, t);
    const f = final.get(t.tile_index);
    if (!f || t.attempt >= f.attempt) final.set(t.tile_index, t);
  }
  const cell = (t: ReportTileRow): [number, number, number] => [t.tile_row, t.tile_col, t.defocus_um!];
  const finals = [...final.values()].filter((t) => t.defocus_um !== null);
  return {
    slide,
    rows: tiles.reduce((m, t) => Math.max(m, t.tile_row + 1), 0),
    cols: tiles.reduce((m, t) => Math.max(m, t.tile_col + 1), 0),
    first: [...first.values()].filter((t) => t.defocus_um !== null).map(cell),
    final: finals.map(cell),
    scan: tiles.filter((t) => t.defocus_um !== null).map((t) => [min(t.at), t.defocus_um!, t.attempt]),
    z_offsets: actions.filter((a) => a.type === 'z_offset' && !a.dry_run && a.status !== 'expired').map((a) => [min(a.at), r3(a.z_offset_um)]),
    surface: surfaceOf(finals),
    actions: loopFigures(tiles, actions, refusals),
  };
}

type DetailStore = Pick<Store, 'driftStats' | 'reportTiles' | 'reportActions' | 'reportRefusals'>;

/** The report with the loop figures, models, trend and per-slide details of [fromMs, toMs). */
export function detailReport(ctx: Context, store: DetailStore, r: DriftReport, fromMs: number, toMs: number): DetailedReport {
  const scanner = ctx.config.scanner.id;
  const tiles = store.reportTiles(fromMs, toMs, scanner);
  const actions = store.reportActions(fromMs, toMs, scanner);
  const refusals = store.reportRefusals(fromMs, toMs, scanner);
  const bySlide = <T extends { slide: string }>(xs: T[]) => {
    const m = new Map<string, T[]>();
    for (const x of xs) {
      let a = m.get(x.slide);
      if (!a) m.set(x.slide, (a = []));
      a.push(x);
    }
    return m;
  };
  const tilesOf = bySlide(tiles);
  const actionsOf = bySlide(actions);
  const refusalsOf = bySlide(refusals);
  const { trendNights, windowHours, change } = ctx.config.reports;
  return {
    ...r,
    actions: loopFigures(tiles, actions, refusals),
    models: [...new Set(tiles.map((t) => `${t.model} ${t.model_version}`))].sort(),
    trend: buildTrend(store, toMs, scanner, { trendNights, windowHours, change }),
    details: r.slides.map((s) => slideDetail(s.slide, tilesOf.get(s.slide) ?? [], actionsOf.get(s.slide) ?? [], refusalsOf.get(s.slide) ?? [])),
  };
}
