/** Per-tile aggregation shared by the scorers: robust centre and spread of patch estimates, focus map. */
import type { FocusMap, ModelInfo, ScoreResult } from '../core/types.js';
import { median } from '../core/stats.js';
import type { PatchPlan } from './patches.js';

/** The focus map's grid: the patch plan's rows and columns. */
export type PlanGrid = Pick<PatchPlan, 'rows' | 'cols'>;

export interface PatchEstimate {
  row: number;
  col: number;
  /** signed, calibrated µm. */
  defocus_um: number;
  /** P(sign right) of this patch, 0.5..1. */
  sign_confidence: number;
  /** model's own σ of |d| (µm), when it has one. */
  sigma_um: number | null;
}


const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

export function noTissueResult(model: ModelInfo, tissueFraction: number, plan: PlanGrid | null): ScoreResult {
  return {
    defocus_um: null,
    uncertainty_um: null,
    sign_confidence: null,
    tissue_fraction: round(tissueFraction),
    patches: 0,
    focus_map: plan ? { rows: plan.rows, cols: plan.cols, defocus_um: new Array<number | null>(plan.rows * plan.cols).fill(null) } : null,
    model,
  };
}

/**
 * Tile result from patch estimates. Magnitude and sign are aggregated apart, as the model reports them:
 * |defocus| = median of the patches' |values| (robust to a fold or a bubble); sign = the patches' signs weighted
 * by how sure each is (2·confidence − 1), ties broken by the signed median. The median of the signed values would
 * be wrong exactly where it matters: on optics whose sign cues the model does not know, the patches of a tile
 * 2 µm out split ±2 µm and their signed median is ~0, "in focus" (measured on the virtual scanner's sa-reversed
 * and `none` instruments: such tiles were never corrected). A split shows in the sign confidence instead.
 * uncertainty = 1.4826·MAD of the magnitudes (a σ for normal spread), at least the model's own median σ/√n when
 * it reports one; sign confidence = mean over patches of P(the tile's sign is right) given each patch's sign and
 * confidence.
 */
export function aggregate(model: ModelInfo, tissueFraction: number, plan: PlanGrid, est: PatchEstimate[]): ScoreResult {
  if (est.length === 0) return noTissueResult(model, tissueFraction, plan);
  const mags = est.map((e) => Math.abs(e.defocus_um));
  const mag = median(mags);
  const mad = median(mags.map((x) => Math.abs(x - mag)));
  let unc = 1.4826 * mad;
  const sig = est.map((e) => e.sigma_um).filter((s): s is number => s !== null && Number.isFinite(s));
  if (sig.length > 0) unc = Math.max(unc, median(sig) / Math.sqrt(sig.length));
  let vote = 0;
  for (const e of est) vote += (e.defocus_um >= 0 ? 1 : -1) * (2 * e.sign_confidence - 1);
  const sgn = vote > 1e-9 ? 1 : vote < -1e-9 ? -1 : median(est.map((e) => e.defocus_um)) >= 0 ? 1 : -1;
  let conf = 0;
  for (const e of est) {
    const agrees = (e.defocus_um >= 0 ? 1 : -1) === sgn;
    conf += agrees ? e.sign_confidence : 1 - e.sign_confidence;
  }
  conf = Math.min(1, Math.max(0.5, conf / est.length));
  const map: FocusMap = { rows: plan.rows, cols: plan.cols, defocus_um: new Array<number | null>(plan.rows * plan.cols).fill(null) };
  for (const e of est) map.defocus_um[e.row * plan.cols + e.col] = round(e.defocus_um, 2);
  return {
    defocus_um: round(sgn * mag),
    uncertainty_um: round(unc),
    sign_confidence: round(conf),
    tissue_fraction: round(tissueFraction),
    patches: est.length,
    focus_map: map,
    model,
  };
}
