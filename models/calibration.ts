// Per-instrument calibration: pure functions (focus measures, in-focus slice, robust linear fit, sign test, Spearman)
// and writeCalibratedBundle. The calibration semantics are the ones toPrediction() in models/manifest.ts applies.
import { copyFile, cp, mkdir, readdir, writeFile } from 'node:fs/promises';
import { median } from '../core/stats.js';
import { join, resolve } from 'node:path';
import { loadBundle, sha256File, validateManifest } from './bundle.js';
import { type CalibrationMagnitude, type ModelManifest, toPrediction } from './manifest.js';

/** Grayscale image, row-major. */
export interface GrayImage {
  width: number;
  height: number;
  data: ArrayLike<number>;
}

export type FocusMeasure = 'std' | 'nvl' | 'brenner';

/** RGB(A) interleaved 8-bit → gray (Rec. 601 luma). */
export function toGray(rgb: ArrayLike<number>, width: number, height: number, channels: number): GrayImage {
  const out = new Float32Array(width * height);
  for (let i = 0, p = 0; i < out.length; i++, p += channels) {
    out[i] = channels >= 3 ? 0.299 * rgb[p]! + 0.587 * rgb[p + 1]! + 0.114 * rgb[p + 2]! : rgb[p]!;
  }
  return { width, height, data: out };
}

function meanOf(img: GrayImage): number {
  let s = 0;
  for (let i = 0; i < img.data.length; i++) s += img.data[i]!;
  return s / img.data.length;
}

/** Standard deviation of intensity: the published method's criterion for the sharpest slice. */
export function stdSharpness(img: GrayImage): number {
  const m = meanOf(img);
  let s = 0;
  for (let i = 0; i < img.data.length; i++) s += (img.data[i]! - m) ** 2;
  return Math.sqrt(s / img.data.length);
}

/**
 * Normalised variance of the Laplacian: var(∇²I) / mean(I)². Responds to the finest frequencies, which defocus
 * removes first, and is insensitive to illumination level; the std criterion is dominated by coarse contrast.
 */
export function nvlSharpness(img: GrayImage): number {
  const { width: w, height: h, data: d } = img;
  let s = 0;
  let s2 = 0;
  let n = 0;
  for (let y = 1; y < h - 1; y++) {
    for (let x = 1; x < w - 1; x++) {
      const i = y * w + x;
      const l = d[i - 1]! + d[i + 1]! + d[i - w]! + d[i + w]! - 4 * d[i]!;
      s += l;
      s2 += l * l;
      n++;
    }
  }
  const m = meanOf(img);
  const v = s2 / n - (s / n) ** 2;
  return v / Math.max(1e-12, m * m);
}

/** Brenner gradient, normalised by mean²: mean of (I(x+2) - I(x))² over both axes. */
export function brennerSharpness(img: GrayImage): number {
  const { width: w, height: h, data: d } = img;
  let s = 0;
  let n = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w - 2; x++) {
      const i = y * w + x;
      s += (d[i + 2]! - d[i]!) ** 2;
      n++;
    }
  }
  for (let y = 0; y < h - 2; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      s += (d[i + 2 * w]! - d[i]!) ** 2;
      n++;
    }
  }
  const m = meanOf(img);
  return s / n / Math.max(1e-12, m * m);
}

export function sharpness(img: GrayImage, measure: FocusMeasure): number {
  return measure === 'std' ? stdSharpness(img) : measure === 'nvl' ? nvlSharpness(img) : brennerSharpness(img);
}

export interface InFocusResult {
  index: number;
  z_um: number;
  measure: FocusMeasure;
  scores: number[];
}

/** The in-focus slice of one focus stack (one lateral position): the slice with the highest focus measure. */
export function findInFocus(slices: { z_um: number; image: GrayImage }[], measure: FocusMeasure): InFocusResult {
  if (slices.length === 0) throw new Error('findInFocus: empty stack');
  const scores = slices.map((s) => sharpness(s.image, measure));
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i]! > scores[best]!) best = i;
  return { index: best, z_um: slices[best]!.z_um, measure, scores };
}

export interface LinearFit {
  slope: number;
  intercept: number;
  r2: number;
  n: number;
  /** robust scale (1.4826 * MAD) of the residuals. */
  residual_sigma: number;
  method: 'ols' | 'huber';
}

function ols(x: number[], y: number[], w?: number[]): { slope: number; intercept: number } {
  let sw = 0, sx = 0, sy = 0;
  for (let i = 0; i < x.length; i++) {
    const wi = w ? w[i]! : 1;
    sw += wi;
    sx += wi * x[i]!;
    sy += wi * y[i]!;
  }
  const mx = sx / sw, my = sy / sw;
  let sxx = 0, sxy = 0;
  for (let i = 0; i < x.length; i++) {
    const wi = w ? w[i]! : 1;
    sxx += wi * (x[i]! - mx) ** 2;
    sxy += wi * (x[i]! - mx) * (y[i]! - my);
  }
  if (sxx <= 0) throw new Error('fitLinear: x has no spread');
  const slope = sxy / sxx;
  return { slope, intercept: my - slope * mx };
}


/** y ≈ slope·x + intercept. robust: Huber IRLS (k = 1.345 robust sigmas), so a few wild points do not pull the line. */
export function fitLinear(x: number[], y: number[], opts: { robust?: boolean } = {}): LinearFit {
  if (x.length !== y.length) throw new Error('fitLinear: x and y differ in length');
  if (x.length < 2) throw new Error('fitLinear: need at least 2 points');
  let { slope, intercept } = ols(x, y);
  const resid = () => x.map((xi, i) => y[i]! - (slope * xi + intercept));
  if (opts.robust) {
    for (let it = 0; it < 50; it++) {
      const r = resid();
      const sigma = 1.4826 * median(r.map(Math.abs)) || 1e-9;
      const k = 1.345 * sigma;
      const w = r.map((ri) => (Math.abs(ri) <= k ? 1 : k / Math.abs(ri)));
      const next = ols(x, y, w);
      const done = Math.abs(next.slope - slope) < 1e-10 && Math.abs(next.intercept - intercept) < 1e-10;
      ({ slope, intercept } = next);
      if (done) break;
    }
  }
  const r = resid();
  const my = y.reduce((a, b) => a + b, 0) / y.length;
  const ssTot = y.reduce((a, b) => a + (b - my) ** 2, 0);
  const ssRes = r.reduce((a, b) => a + b * b, 0);
  return { slope, intercept, r2: ssTot > 0 ? 1 - ssRes / ssTot : NaN, n: x.length, residual_sigma: 1.4826 * median(r.map(Math.abs)), method: opts.robust ? 'huber' : 'ols' };
}

function ranks(v: number[]): number[] {
  const idx = v.map((x, i) => [x, i] as const).sort((a, b) => a[0] - b[0]);
  const r = new Array<number>(v.length);
  for (let i = 0; i < idx.length; ) {
    let j = i;
    while (j + 1 < idx.length && idx[j + 1]![0] === idx[i]![0]) j++;
    for (let k = i; k <= j; k++) r[idx[k]![1]] = (i + j) / 2 + 1; // ties share the mean rank
    i = j + 1;
  }
  return r;
}

/** Spearman rank correlation (Pearson on ranks, ties averaged). */
export function spearman(a: number[], b: number[]): number {
  if (a.length !== b.length || a.length < 2) throw new Error('spearman: need two equally long series of >= 2');
  const ra = ranks(a), rb = ranks(b);
  const ma = ra.reduce((s, x) => s + x, 0) / ra.length, mb = rb.reduce((s, x) => s + x, 0) / rb.length;
  let sab = 0, saa = 0, sbb = 0;
  for (let i = 0; i < ra.length; i++) {
    sab += (ra[i]! - ma) * (rb[i]! - mb);
    saa += (ra[i]! - ma) ** 2;
    sbb += (rb[i]! - mb) ** 2;
  }
  return saa > 0 && sbb > 0 ? sab / Math.sqrt(saa * sbb) : NaN;
}

/** P(X >= k) for X ~ Binomial(n, 1/2), exact. */
export function binomialTailHalf(k: number, n: number): number {
  if (k <= 0) return 1;
  if (k > n) return 0;
  const logFact = [0];
  for (let i = 1; i <= n; i++) logFact.push(logFact[i - 1]! + Math.log(i));
  let p = 0;
  for (let i = k; i <= n; i++) p += Math.exp(logFact[n]! - logFact[i]! - logFact[n - i]! - n * Math.LN2);
  return Math.min(1, p);
}

export interface SignTest {
  /** slices with |z - z_focus| >= min_abs_z_um that were used. */
  n: number;
  agree: number;
  agreement: number;
  /** one-sided exact binomial p-values against chance (1/2). */
  p_model: number;
  p_inverted: number;
  decision: 'model' | 'inverted' | 'unrecoverable';
  min_abs_z_um: number;
  alpha: number;
}

/**
 * Is the sign recoverable on this instrument? Compares the model's sign (sign_logit > 0) with the sign of
 * z - z_focus where |z - z_focus| >= minAbsZ. Agreement beyond chance → 'model'; disagreement beyond chance →
 * 'inverted' (the instrument's z axis is reversed); neither → 'unrecoverable'.
 */
export function signTest(zRel: number[], signLogit: number[], opts: { minAbsZ?: number; alpha?: number } = {}): SignTest {
  const minAbsZ = opts.minAbsZ ?? 1;
  const alpha = opts.alpha ?? 0.01;
  let n = 0, agree = 0;
  for (let i = 0; i < zRel.length; i++) {
    if (Math.abs(zRel[i]!) < minAbsZ) continue;
    n++;
    if (signLogit[i]! > 0 === zRel[i]! > 0) agree++;
  }
  const pModel = binomialTailHalf(agree, n);
  const pInv = binomialTailHalf(n - agree, n);
  const decision = n > 0 && pModel < alpha ? 'model' : n > 0 && pInv < alpha ? 'inverted' : 'unrecoverable';
  return { n, agree, agreement: n ? agree / n : NaN, p_model: pModel, p_inverted: pInv, decision, min_abs_z_um: minAbsZ, alpha };
}

/** Share of slices whose model sign agrees with the sign of z − z_focus, per band of |z − z_focus| (z = 0 left out). */
export interface SignBand {
  from_um: number;
  to_um: number;
  n: number;
  agreement: number | null;
}

/**
 * Where on the stack the model's sign can be trusted: agreement per 1 µm band of |z| (by default), over every slice
 * given (not only the fit range). The sign decision is one number for the whole stack; a model whose sign flips
 * beyond some |z| shows it here.
 */
export function signByAbsZ(samples: Pick<CalibrationSample, 'z_rel_um' | 'sign_logit'>[], widthUm = 1): SignBand[] {
  const signed = samples.filter((s) => s.z_rel_um !== 0);
  const band = (s: { z_rel_um: number }) => Math.floor(Math.abs(s.z_rel_um) / widthUm + 1e-9);
  const bands = signed.length ? Math.max(...signed.map(band)) + 1 : 0;
  return Array.from({ length: bands }, (_, k) => {
    const inBand = signed.filter((s) => band(s) === k);
    const agree = inBand.filter((s) => s.sign_logit > 0 === s.z_rel_um > 0).length;
    return { from_um: k * widthUm, to_um: (k + 1) * widthUm, n: inBand.length, agreement: inBand.length ? Math.round((agree / inBand.length) * 1000) / 1000 : null };
  });
}

export interface CalibrationSample {
  /** true signed defocus z - z_focus, µm. */
  z_rel_um: number;
  abs_um: number;
  sign_logit: number;
  /** lateral position of the stack the slice belongs to (held-out validation leaves one position out). */
  position?: string;
}

/** Where the calibrated in/out decision falls on data the fit did not see (true |z| at which |prediction| = tolerance). */
export interface BoundaryCheck {
  /** true z at which the prediction crosses +tolerance / −tolerance (null when a side has too few held-out slices). */
  positive_um: number | null;
  negative_um: number | null;
  /** largest distance of the two crossings from ±tolerance (a crossing beyond the held-out slices' z is put at their edge: then a lower bound). */
  error_um: number | null;
}

/** Does the magnitude fit help on stack positions / slices it was not fitted to? */
export interface MagnitudeValidation {
  /** which line was checked: through the signed output, or in |d| (calibration.magnitude). */
  form: CalibrationMagnitude;
  method: 'leave-one-position-out' | 'z-parity' | 'none';
  folds: number;
  /** held-out MAE (µm) and in/out boundary with the sign decision alone (identity magnitude) and with the fit. */
  heldout: {
    mae_um: { identity: number | null; fit: number | null };
    boundary: { identity: BoundaryCheck; fit: BoundaryCheck };
    /** how the held-out readings scatter at the tolerance, and the guard band that follows (guardBandOf). */
    guard: { identity: GuardBand; fit: GuardBand };
    samples: number;
  };
  applied: boolean;
  reason: string;
  /** the fit on all samples, whether applied or not. */
  fitted: { slope: number; intercept: number };
}

/** Largest shift of the in/out boundary a calibration may make on held-out data (µm). */
export const MAX_BOUNDARY_SHIFT_UM = 0.1;

/**
 * The guard band of a calibrated bundle: how far inside the tolerance its in/out decision sits. A calibrated
 * reading is unbiased at the tolerance, so a tile just beyond it is called in focus as often as not (on the virtual
 * scanner's matching optics, real held-out tissue: slide yield 99.6 % uncalibrated, whose 1.12× over-read happened
 * to act as a margin, 96-97 % calibrated). From the held-out slices near the tolerance (| |z| − tol | ≤ GUARD_WINDOW_UM):
 * residual r = |prediction| − |z|, guard = max(0, sd(r) − mean(r)), so a tile at the tolerance is read beyond
 * tol − guard about 84 % of the time (one sd); an under-read (mean < 0) widens it, an over-read narrows it.
 * At most GUARD_MAX_SHARE of the tolerance; 0 with fewer than GUARD_MIN_SLICES such slices. (A cap of half the
 * tolerance was measured: on the optics that under-read near focus, sa-reversed and colour-reversed, bands of
 * 0.35-0.5 µm made near-focus tiles out of focus, and moving those on a sign that is a coin toss there cost up to
 * 7 wrong-way moves on a first slide and 1.7 acquisitions per tile.)
 */
export interface GuardBand {
  guard_um: number;
  /** sd and mean of |prediction| − |z| on the held-out slices near the tolerance; null: too few slices. */
  sd_um: number | null;
  bias_um: number | null;
  slices: number;
}
export const GUARD_MAX_SHARE = 0.25;
/** held-out slices this close to ±tolerance count (a wider window measures the line's misfit, not the scatter). */
export const GUARD_WINDOW_UM = 0.25;
export const GUARD_MIN_SLICES = 6;

export function guardBandOf(z: number[], pred: number[], tol: number): GuardBand {
  const r = z.map((v, i) => ({ v, p: pred[i]! })).filter(({ v, p }) => v !== 0 && Math.abs(Math.abs(v) - tol) <= GUARD_WINDOW_UM && Number.isFinite(p)).map(({ v, p }) => Math.abs(p) - Math.abs(v));
  if (r.length < GUARD_MIN_SLICES) return { guard_um: 0, sd_um: null, bias_um: null, slices: r.length };
  const mean = r.reduce((a, b) => a + b, 0) / r.length;
  const sd = Math.sqrt(r.reduce((a, b) => a + (b - mean) ** 2, 0) / (r.length - 1));
  const k = (v: number) => Math.round(v * 1000) / 1000;
  return { guard_um: k(Math.min(GUARD_MAX_SHARE * tol, Math.max(0, sd - mean))), sd_um: k(sd), bias_um: k(mean), slices: r.length };
}

export interface CalibrationFit {
  calibration: ModelManifest['calibration'];
  /**
   * held-out check of the magnitude fit that was applied (the form with the lower held-out MAE of those that pass),
   * or of the signed form when none was; calibration has identity magnitude when none was applied.
   */
  magnitude: MagnitudeValidation;
  /** both forms' held-out checks; abs is null when the sign is unrecoverable (the signed form is a line in |d| then). */
  magnitude_forms: { signed: MagnitudeValidation; abs: MagnitudeValidation | null };
  /** which form was applied (or identity) and why. */
  magnitude_choice: string;
  sign: SignTest;
  /** the signed form's line on all samples. */
  fit: LinearFit;
  /** the abs form's line on all samples (|z| against |output|); null when the sign is unrecoverable. */
  fit_abs: LinearFit | null;
  spearman_abs_before: number;
  spearman_abs_after: number;
  /** share of samples with |calibrated - z_rel| <= 1 µm, before / after. */
  within_1um_before: number;
  within_1um_after: number;
  mae_um_before: number;
  mae_um_after: number;
  n: number;
}

function evalWith(m: ModelManifest, cal: ModelManifest['calibration'], s: CalibrationSample[]) {
  const mm = { ...m, calibration: cal };
  const pred = s.map((x) => toPrediction(mm, x.abs_um, x.sign_logit).defocus_um);
  // for 'unrecoverable' only the magnitude is meaningful, so compare magnitudes
  const unsigned = cal.sign === 'unrecoverable';
  const err = pred.map((p, i) => (unsigned ? Math.abs(p) - Math.abs(s[i]!.z_rel_um) : p - s[i]!.z_rel_um));
  return {
    spearman: spearman(pred.map(Math.abs), s.map((x) => Math.abs(x.z_rel_um))),
    within1: err.filter((e) => Math.abs(e) <= 1).length / err.length,
    mae: err.reduce((a, e) => a + Math.abs(e), 0) / err.length,
  };
}

/**
 * The line's x for a sample: the network's signed output (sign flipped if inverted), or |output| when the sign is
 * unrecoverable or the line is in |d| (abs form).
 */
function xOf(s: CalibrationSample, decision: SignTest['decision'], form: CalibrationMagnitude = 'signed'): number {
  if (decision === 'unrecoverable' || form === 'abs') return Math.abs(s.abs_um);
  return (decision === 'inverted' ? -1 : 1) * (s.sign_logit >= 0 ? 1 : -1) * Math.max(0, s.abs_um);
}

function yOf(s: CalibrationSample, decision: SignTest['decision'], form: CalibrationMagnitude = 'signed'): number {
  return decision === 'unrecoverable' || form === 'abs' ? Math.abs(s.z_rel_um) : s.z_rel_um;
}

/**
 * True z where held-out predictions cross ±tolerance: a line through (z, prediction) of the slices on each side
 * within 2·tolerance + 1 µm of focus, solved for the tolerance. Unrecoverable sign: magnitudes, one side.
 */
export function boundaryOf(z: number[], pred: number[], tol: number, unsigned: boolean): BoundaryCheck {
  const side = (sgn: 1 | -1): number | null => {
    const idx = z.map((_, i) => i).filter((i) => (unsigned ? true : Math.sign(z[i]!) === sgn) && Math.abs(z[i]!) <= 2 * tol + 1 && z[i] !== 0);
    const zs = idx.map((i) => (unsigned ? Math.abs(z[i]!) : z[i]!));
    const ps = idx.map((i) => (unsigned ? Math.abs(pred[i]!) : pred[i]!));
    if (new Set(zs).size < 2) return null;
    const { slope, intercept } = ols(zs, ps);
    if (!(slope > 0)) return null;
    // a crossing beyond the slices is what the line says, not what was seen (a nearly flat line "crosses" at 200
    // µm): it is reported at the edge of the slices' z, so the error is then a lower bound
    return Math.min(Math.max((sgn * tol - intercept) / slope, Math.min(...zs)), Math.max(...zs));
  };
  const positive = side(1);
  const negative = unsigned ? null : side(-1);
  const errs = [positive === null ? null : Math.abs(positive - tol), negative === null ? null : Math.abs(negative + tol)].filter((v): v is number => v !== null);
  return { positive_um: positive, negative_um: negative, error_um: errs.length ? Math.max(...errs) : null };
}

/**
 * The magnitude fit is applied only when it improves the error on data it was not fitted to: leave one stack
 * position out (several positions), or fit on the even-numbered slices and test on the odd ones and back (one
 * position). It must lower the held-out MAE and must not move the held-out in/out boundary more than
 * MAX_BOUNDARY_SHIFT_UM beyond where the sign decision alone puts it; otherwise identity, with the reason.
 */
export function validateMagnitude(
  manifest: ModelManifest,
  samples: CalibrationSample[],
  decision: SignTest['decision'],
  all: LinearFit,
  opts: { robust?: boolean; toleranceUm: number; form?: CalibrationMagnitude },
): MagnitudeValidation {
  const form = opts.form ?? 'signed';
  const positions = [...new Set(samples.map((s) => s.position ?? ''))];
  const folds: { train: CalibrationSample[]; test: CalibrationSample[] }[] = [];
  let method: MagnitudeValidation['method'];
  if (positions.length >= 2) {
    method = 'leave-one-position-out';
    for (const p of positions) folds.push({ train: samples.filter((s) => (s.position ?? '') !== p), test: samples.filter((s) => (s.position ?? '') === p) });
  } else {
    method = 'z-parity';
    const byZ = [...samples].sort((a, b) => a.z_rel_um - b.z_rel_um);
    const even = byZ.filter((_, i) => i % 2 === 0);
    const odd = byZ.filter((_, i) => i % 2 === 1);
    folds.push({ train: even, test: odd }, { train: odd, test: even });
  }
  const fitted = { slope: all.slope, intercept: all.intercept };
  // identity is the same prediction in either form (|raw| >= 0)
  const identityCal = { slope: 1, intercept: 0, sign: decision, source: 'identity' };
  const none = (reason: string): MagnitudeValidation => ({
    form,
    method,
    folds: folds.length,
    heldout: { mae_um: { identity: null, fit: null }, boundary: { identity: boundaryOf([], [], 1, false), fit: boundaryOf([], [], 1, false) }, guard: { identity: guardBandOf([], [], 1), fit: guardBandOf([], [], 1) }, samples: 0 },
    applied: false,
    reason,
    fitted,
  });
  const MIN_TRAIN = 5;
  const MIN_TEST = 3;
  const small = folds.find((f) => f.train.length < MIN_TRAIN || f.test.length < MIN_TEST);
  if (small) {
    return none(
      `too few slices to check the fit on data it did not see (${method}: a fold fits ${small.train.length} and tests ${small.test.length} slices; ` +
        `needs ≥ ${MIN_TRAIN} and ≥ ${MIN_TEST}): more slices or more stack positions`,
    );
  }
  const z: number[] = [];
  const pId: number[] = [];
  const pFit: number[] = [];
  for (const f of folds) {
    const x = f.train.map((s) => xOf(s, decision, form));
    const y = f.train.map((s) => yOf(s, decision, form));
    if (new Set(x).size < 2) return none(`a fold's training slices have no spread in the model's output (${method})`);
    const lf = fitLinear(x, y, { robust: opts.robust });
    const cal = { ...identityCal, slope: lf.slope, intercept: lf.intercept, magnitude: form };
    for (const s of f.test) {
      z.push(s.z_rel_um);
      pId.push(toPrediction({ ...manifest, calibration: identityCal }, s.abs_um, s.sign_logit).defocus_um);
      pFit.push(lf.slope > 0 ? toPrediction({ ...manifest, calibration: cal }, s.abs_um, s.sign_logit).defocus_um : NaN);
    }
  }
  const unsigned = decision === 'unrecoverable';
  const err = (p: number[]) => p.reduce((a, v, i) => a + Math.abs((unsigned ? Math.abs(v) - Math.abs(z[i]!) : v - z[i]!)), 0) / p.length;
  const maeId = err(pId);
  const maeFit = pFit.some((v) => !Number.isFinite(v)) ? Infinity : err(pFit);
  const bId = boundaryOf(z, pId, opts.toleranceUm, unsigned);
  const bFit = pFit.some((v) => !Number.isFinite(v)) ? boundaryOf([], [], 1, false) : boundaryOf(z, pFit, opts.toleranceUm, unsigned);
  const r3 = (v: number) => Math.round(v * 1000) / 1000;
  const guard = { identity: guardBandOf(z, pId, opts.toleranceUm), fit: pFit.some((v) => !Number.isFinite(v)) ? guardBandOf([], [], 1) : guardBandOf(z, pFit, opts.toleranceUm) };
  const heldout = { mae_um: { identity: r3(maeId), fit: Number.isFinite(maeFit) ? r3(maeFit) : null }, boundary: { identity: bId, fit: bFit }, guard, samples: z.length };
  let applied = false;
  let reason: string;
  if (!(all.slope > 0)) reason = `the fit's slope ${r3(all.slope)} is not positive`;
  else if (!(maeFit < maeId)) reason = `on held-out slices (${method}) the fit's MAE ${Number.isFinite(maeFit) ? r3(maeFit) : '∞'} µm is not below identity's ${r3(maeId)} µm`;
  else if (bFit.error_um === null) reason = `the held-out slices (${method}) do not bracket the in/out boundary ±${opts.toleranceUm} µm, so its shift cannot be checked`;
  else if (bFit.error_um > Math.max(MAX_BOUNDARY_SHIFT_UM, bId.error_um ?? 0)) {
    // the fit may move the boundary only towards the truth, or stay within MAX_BOUNDARY_SHIFT_UM of it
    reason = `on held-out slices (${method}) the fit puts the in/out boundary ${r3(bFit.error_um)} µm from ±${opts.toleranceUm} µm (identity: ${bId.error_um === null ? '–' : r3(bId.error_um)} µm; allowed: ${MAX_BOUNDARY_SHIFT_UM} µm, or closer than identity)`;
  } else {
    applied = true;
    reason = `on held-out slices (${method}, ${folds.length} folds, ${z.length} slices) MAE ${r3(maeId)} → ${r3(maeFit)} µm, boundary ${bId.error_um === null ? '–' : r3(bId.error_um)} → ${r3(bFit.error_um)} µm from ±${opts.toleranceUm} µm`;
  }
  return { form, method, folds: folds.length, heldout, applied, reason, fitted };
}

/**
 * Of the forms whose fit passed its held-out check, the one with the lower held-out MAE (signed on a tie);
 * null when none passed.
 */
export function chooseMagnitude(signed: MagnitudeValidation, abs: MagnitudeValidation | null): { chosen: MagnitudeValidation | null; why: string } {
  const r3 = (v: number | null) => (v === null ? '–' : String(Math.round(v * 1000) / 1000));
  const ok = [signed, abs].filter((v): v is MagnitudeValidation => v !== null && v.applied);
  if (ok.length === 0) {
    return { chosen: null, why: abs === null ? 'the signed fit did not pass its held-out check (the sign is unrecoverable: the line is in |d| already)' : 'neither the signed nor the abs fit passed its held-out check' };
  }
  if (ok.length === 1) {
    const other = ok[0] === signed ? abs : signed;
    return { chosen: ok[0]!, why: other === null ? `${ok[0]!.form} form (the sign is unrecoverable: the signed form is a line in |d| already)` : `${ok[0]!.form} form: the only one that passed its held-out check` };
  }
  const a = abs!;
  const chosen = a.heldout.mae_um.fit! < signed.heldout.mae_um.fit! ? a : signed;
  return { chosen, why: `${chosen.form} form: both passed, held-out MAE abs ${r3(a.heldout.mae_um.fit)} µm vs signed ${r3(signed.heldout.mae_um.fit)} µm` };
}

/**
 * Fits model output → µm on one instrument. First the sign test decides sign handling; then two lines are fitted:
 * signed form, the network's signed output (sign · abs_um, sign flipped if inverted) to z - z_focus (|output| to
 * |z - z_focus| when the sign is unrecoverable), and abs form, |output| to |z - z_focus| with the sign kept — exactly
 * what toPrediction() undoes for calibration.magnitude signed / abs. Each is checked on held-out data
 * (validateMagnitude); of those that pass, the one with the lower held-out MAE is applied, else identity.
 */
export function fitCalibration(
  manifest: ModelManifest,
  samples: CalibrationSample[],
  opts: { robust?: boolean; minAbsZ?: number; alpha?: number; source?: string; now?: Date; toleranceUm?: number } = {},
): CalibrationFit {
  if (samples.length < 3) throw new Error(`fitCalibration: need at least 3 samples, got ${samples.length}`);
  const sign = signTest(samples.map((s) => s.z_rel_um), samples.map((s) => s.sign_logit), opts);
  const x = samples.map((s) => xOf(s, sign.decision));
  const y = samples.map((s) => yOf(s, sign.decision));
  const fit = fitLinear(x, y, { robust: opts.robust });
  if (!(fit.slope > 0)) {
    throw new Error(`fitCalibration: fitted slope ${fit.slope.toFixed(4)} is not positive: the model's output does not grow with defocus on this stack`);
  }
  const toleranceUm = opts.toleranceUm ?? 1;
  const signed = validateMagnitude(manifest, samples, sign.decision, fit, { robust: opts.robust, toleranceUm, form: 'signed' });
  // the line in |d|: corrects an over- or under-read on both sides of focus, which a line through the signed output
  // cannot (it would have to move +d down and −d up at once). The same as signed when the sign is unrecoverable.
  let fitAbs: LinearFit | null = null;
  let abs: MagnitudeValidation | null = null;
  if (sign.decision !== 'unrecoverable') {
    const xa = samples.map((s) => xOf(s, sign.decision, 'abs'));
    if (new Set(xa).size >= 2) {
      fitAbs = fitLinear(xa, samples.map((s) => yOf(s, sign.decision, 'abs')), { robust: opts.robust });
      abs = validateMagnitude(manifest, samples, sign.decision, fitAbs, { robust: opts.robust, toleranceUm, form: 'abs' });
    }
  }
  const { chosen, why } = chooseMagnitude(signed, abs);
  const magnitude = chosen ?? signed;
  const line = chosen === null ? null : chosen.form === 'abs' ? fitAbs! : fit;
  const others = [signed, abs].filter((v): v is MagnitudeValidation => v !== null && v !== magnitude).map((v) => `; ${v.form} form: ${v.reason}`);
  // the guard band of the magnitude the bundle will use, measured on the same held-out slices
  const guard = chosen ? chosen.heldout.guard.fit : magnitude.heldout.guard.identity;
  const calibration: ModelManifest['calibration'] = {
    slope: line ? line.slope : 1,
    intercept: line ? line.intercept : 0,
    sign: sign.decision,
    magnitude: chosen?.form ?? 'signed',
    guard_um: guard.guard_um,
    source:
      `${opts.source ?? 'focus stack'}; magnitude ${chosen ? `fit applied (${chosen.form} form)` : 'identity'}: ${magnitude.reason}` +
      `${others.join('')}; chosen: ${why}; ${guardText(guard, toleranceUm)}`,
    fitted_at: (opts.now ?? new Date()).toISOString(),
  };
  const identity: ModelManifest['calibration'] = { slope: 1, intercept: 0, sign: 'model', source: 'identity' };
  const before = evalWith(manifest, identity, samples);
  const after = evalWith(manifest, calibration, samples);
  return {
    calibration,
    magnitude,
    magnitude_forms: { signed, abs },
    magnitude_choice: why,
    sign,
    fit,
    fit_abs: fitAbs,
    spearman_abs_before: before.spearman,
    spearman_abs_after: after.spearman,
    within_1um_before: before.within1,
    within_1um_after: after.within1,
    mae_um_before: before.mae,
    mae_um_after: after.mae,
    n: samples.length,
  };
}

function guardText(g: GuardBand, tol: number): string {
  if (g.sd_um === null) return `guard band 0 µm (${g.slices} held-out slices within ${GUARD_WINDOW_UM} µm of ±${tol} µm, needs ${GUARD_MIN_SLICES})`;
  return `guard band ${g.guard_um} µm: in focus up to ${Math.round((tol - g.guard_um) * 1000) / 1000} µm (held-out readings near ±${tol} µm: sd ${g.sd_um} µm, bias ${(g.bias_um ?? 0) >= 0 ? '+' : ''}${g.bias_um} µm, ${g.slices} slices)`;
}

/**
 * Copies a bundle to dstDir with manifest.calibration replaced and the calibration report stored under
 * manifest.metrics.calibration. The model file is copied byte for byte, so its sha256 stays valid (checked).
 */
export async function writeCalibratedBundle(
  srcDir: string,
  dstDir: string,
  calibration: ModelManifest['calibration'],
  metrics?: Record<string, unknown>,
): Promise<{ manifest: ModelManifest; modelPath: string }> {
  const src = resolve(srcDir);
  const dst = resolve(dstDir);
  if (src === dst) throw new Error('writeCalibratedBundle: destination is the source bundle');
  const { manifest } = await loadBundle(src);
  await mkdir(dst, { recursive: true });
  // everything but the manifest (tfjs bundles have weight shards next to model.json)
  for (const e of await readdir(src, { withFileTypes: true })) {
    if (e.name === 'manifest.json') continue;
    if (e.isDirectory()) await cp(join(src, e.name), join(dst, e.name), { recursive: true });
    else await copyFile(join(src, e.name), join(dst, e.name));
  }
  const next: ModelManifest = {
    ...manifest,
    calibration,
    metrics: { ...(manifest.metrics ?? {}), ...(metrics ? { calibration: metrics } : {}) },
  };
  const sha = await sha256File(join(dst, manifest.file));
  if (sha !== manifest.sha256) throw new Error(`writeCalibratedBundle: copied ${manifest.file} hashes to ${sha}, expected ${manifest.sha256}`);
  await validateManifest(next, join(dst, 'manifest.json'));
  await writeFile(join(dst, 'manifest.json'), JSON.stringify(next, null, 2) + '\n');
  return loadBundle(dst);
}
