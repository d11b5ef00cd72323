/**
 * The report's view across nights: four figures per night from the tile history, and a change detector on them.
 *
 * Change detector (docs/reports.md): a two-sided tabular CUSUM per figure. The first `baselineNights` nights give
 * the in-control level μ (mean) and spread σ (sample standard deviation, floored at `minSigmaFraction`·|μ| and at the
 * figure's resolution; a median/MAD would be 0 for counts that are mostly 0). Each later night adds z = (x − μ)/σ: S⁺ ← max(0, S⁺ + z − k), S⁻ ← max(0, S⁻ − z − k). When S crosses
 * h the figure has shifted; the shift began the night after S was last 0. It is reported only when the mean since
 * then differs from μ by at least `minRatio` (a practical size, not only a statistical one).
 */
import type { DriftStats, Store } from '../adapters/store.js';

export const TREND_METRICS = ['out_of_focus_rate', 'mean_abs_defocus_um', 'drift_um_per_h', 'corrections_per_slide'] as const;
export type TrendMetric = (typeof TREND_METRICS)[number];

export const METRIC_LABEL: Record<TrendMetric, string> = {
  out_of_focus_rate: 'out-of-focus rate',
  mean_abs_defocus_um: 'mean |defocus|',
  drift_um_per_h: 'drift µm/h',
  corrections_per_slide: 'drift correction per slide',
};

/** The smallest σ each figure is given: its meaningful resolution (a quiet, steady baseline would alarm on noise). */
const SIGMA_FLOOR: Record<TrendMetric, number> = {
  out_of_focus_rate: 0.005,
  mean_abs_defocus_um: 0.02,
  drift_um_per_h: 0.05,
  corrections_per_slide: 0.1,
};

export interface NightFigures {
  /** date (UTC) of the end of the night's window: the report date. */
  date: string;
  from: string;
  to: string;
  slides: number;
  tiles: number;
  out_of_focus_rate: number | null;
  mean_abs_defocus_um: number | null;
  /** mean over the night's slides of |drift| (µm/h). */
  drift_um_per_h: number | null;
  /** z-offset corrections per slide. */
  corrections_per_slide: number | null;
}

export interface ChangeOptions {
  baselineNights: number;
  k: number;
  h: number;
  minRatio: number;
  minSigmaFraction: number;
}

export interface ChangeAlert {
  kind: 'change';
  metric: TrendMetric;
  direction: 'up' | 'down';
  /** first night of the new level. */
  since: string;
  /** night the CUSUM crossed h. */
  detected: string;
  baseline: number;
  recent: number;
  /** recent / baseline; null when the baseline is 0. */
  ratio: number | null;
  message: string;
}

export interface Trend {
  nights: NightFigures[];
  alerts: ChangeAlert[];
  detector: ChangeOptions & { method: 'cusum' };
}

const r3 = (v: number) => Math.round(v * 1000) / 1000;

/** The figures of one night from its per-slide drift statistics. */
export function nightFigures(stats: DriftStats[], fromMs: number, toMs: number): NightFigures {
  const withTissue = stats.reduce((a, s) => a + s.with_tissue, 0);
  const oof = stats.reduce((a, s) => a + s.out_of_focus, 0);
  const absW = stats.filter((s) => s.mean_abs_defocus_um !== null && s.with_tissue > 0);
  const wsum = absW.reduce((a, s) => a + s.with_tissue, 0);
  const drifts = stats.filter((s) => s.drift_um_per_h !== null).map((s) => Math.abs(s.drift_um_per_h!));
  return {
    date: new Date(toMs).toISOString().slice(0, 10),
    from: new Date(fromMs).toISOString(),
    to: new Date(toMs).toISOString(),
    slides: stats.length,
    tiles: stats.reduce((a, s) => a + s.tiles, 0),
    out_of_focus_rate: withTissue ? r3(oof / withTissue) : null,
    mean_abs_defocus_um: wsum ? r3(absW.reduce((a, s) => a + s.mean_abs_defocus_um! * s.with_tissue, 0) / wsum) : null,
    drift_um_per_h: drifts.length ? r3(drifts.reduce((a, b) => a + b, 0) / drifts.length) : null,
    corrections_per_slide: stats.length ? r3(stats.reduce((a, s) => a + s.z_offsets, 0) / stats.length) : null,
  };
}

/** The last `nights` report windows ending at toMs (oldest first), read from the history. Nights without tiles are kept (slides 0). */
export function nightlyFigures(store: Pick<Store, 'driftStats'>, toMs: number, nights: number, windowHours: number, scanner: string): NightFigures[] {
  const out: NightFigures[] = [];
  for (let i = nights - 1; i >= 0; i--) {
    const end = toMs - i * 86_400_000;
    const start = end - windowHours * 3_600_000;
    out.push(nightFigures(store.driftStats(start, end, scanner), start, end));
  }
  return out;
}

/** Two-sided CUSUM per figure over the nights (see the file comment). At most one alert per figure and direction. */
export function detectChanges(nights: NightFigures[], o: ChangeOptions): ChangeAlert[] {
  const alerts: ChangeAlert[] = [];
  for (const metric of TREND_METRICS) {
    const pts = nights.map((n, i) => ({ i, v: n[metric] })).filter((p): p is { i: number; v: number } => p.v !== null);
    if (pts.length <= o.baselineNights) continue;
    const base = pts.slice(0, o.baselineNights).map((p) => p.v);
    const mu = base.reduce((a, b) => a + b, 0) / base.length;
    const sd = Math.sqrt(base.reduce((a, b) => a + (b - mu) ** 2, 0) / Math.max(1, base.length - 1));
    const sigma = Math.max(sd, o.minSigmaFraction * Math.abs(mu), SIGMA_FLOOR[metric]);
    for (const direction of ['up', 'down'] as const) {
      const sign = direction === 'up' ? 1 : -1;
      let s = 0;
      let start = -1;
      for (let j = o.baselineNights; j < pts.length; j++) {
        const z = (sign * (pts[j]!.v - mu)) / sigma;
        s = Math.max(0, s + z - o.k);
        if (s === 0) {
          start = -1;
          continue;
        }
        if (start < 0) start = j;
        if (s <= o.h) continue;
        const since = pts.slice(start);
        const recent = since.reduce((a, p) => a + p.v, 0) / since.length;
        const ratio = mu !== 0 ? recent / mu : null;
        const big = ratio === null ? recent !== 0 : direction === 'up' ? ratio >= o.minRatio : ratio <= 1 / o.minRatio;
        if (big) {
          const sinceDate = nights[pts[start]!.i]!.date;
          // "up 3.0×", "down to 0.20×", or "up 63 %" for changes under 2×
          const size =
            ratio === null ? `from 0 to ${r3(recent)}` : ratio >= 1.95 ? `${ratio.toFixed(1)}×` : ratio <= 0.5 ? `to ${ratio.toFixed(2)}×` : `${Math.round(Math.abs(ratio - 1) * 100)} %`;
          alerts.push({
            kind: 'change',
            metric,
            direction,
            since: sinceDate,
            detected: nights[pts[j]!.i]!.date,
            baseline: r3(mu),
            recent: r3(recent),
            ratio: ratio === null ? null : r3(ratio),
            message: `${METRIC_LABEL[metric]} ${direction} ${size} since ${sinceDate} (${r3(mu)} → ${r3(recent)})`,
          });
        }
        break;
      }
    }
  }
  return alerts;
}


export function buildTrend(store: Pick<Store, 'driftStats'>, toMs: number, scanner: string, cfg: { trendNights: number; windowHours: number; change: ChangeOptions }): Trend {
  const nights = nightlyFigures(store, toMs, cfg.trendNights, cfg.windowHours, scanner);
  return { nights, alerts: detectChanges(nights, cfg.change), detector: { method: 'cusum', ...cfg.change } };
}
