/**
 * Focus surface of one slide: best-focus stage z as a low-order function of stage (x, y), fitted robustly to the
 * tiles scored so far (best focus = stage z − signed defocus). A plane first, a quadratic once enough tiles are
 * spread over the slide. Used to predict the defocus of the next tile and to tell tilt (the focal plane is where
 * it was, the scanner does not follow it) from drift (the focal plane itself moved).
 */
import { median } from '../core/stats.js';
import type { SurfaceFit, SurfacePrediction } from '../core/types.js';


export interface SurfaceOptions {
  minPointsPlane: number;
  minPointsQuadratic: number;
  maxPoints: number;
}

/** Smallest number of points for each model, whatever the configuration says (one per coefficient plus one). */
const MIN_FOR = { plane: 4, quadratic: 7 } as const;
/** Ridge term on the non-constant coefficients: keeps the fit defined when all tiles lie on one row. */
const RIDGE = 1e-6;

export class FocusSurface {
  private readonly pts: { x: number; y: number; z: number }[] = [];
  private cached: SurfaceFit | null | undefined;
  private cachedPlane: SurfaceFit | null | undefined;

  constructor(private readonly opts: SurfaceOptions) {}

  get size(): number {
    return this.pts.length;
  }

  add(x: number, y: number, bestFocusZ: number): void {
    if (![x, y, bestFocusZ].every(Number.isFinite)) return;
    this.pts.push({ x, y, z: bestFocusZ });
    if (this.pts.length > this.opts.maxPoints) this.pts.shift();
    this.cached = undefined;
    this.cachedPlane = undefined;
  }

  /** The surface: a plane, a quadratic once there are enough points; `'plane'`: a plane whatever the count (a tilt). */
  fit(model?: 'plane'): SurfaceFit | null {
    if (model === 'plane') {
      if (this.cachedPlane === undefined) this.cachedPlane = this.compute('plane');
      return this.cachedPlane;
    }
    if (this.cached === undefined) this.cached = this.compute();
    return this.cached;
  }

  predict(x: number, y: number, stageZ: number): SurfacePrediction | null {
    const f = this.fit();
    if (!f) return null;
    const z = evaluate(f, x, y);
    const r = (v: number) => Math.round(v * 1000) / 1000;
    return { best_focus_z_um: r(z), defocus_um: r(stageZ - z), model: f.model, points: f.points, rms_um: r(f.rms_um) };
  }

  private compute(force?: 'plane'): SurfaceFit | null {
    const n = this.pts.length;
    if (n < Math.max(this.opts.minPointsPlane, MIN_FOR.plane)) return null;
    const cx = this.pts.reduce((a, p) => a + p.x, 0) / n;
    const cy = this.pts.reduce((a, p) => a + p.y, 0) / n;
    let scale = 0;
    for (const p of this.pts) scale = Math.max(scale, Math.abs(p.x - cx), Math.abs(p.y - cy));
    if (scale === 0) scale = 1;
    const model: SurfaceFit['model'] = force ?? (n >= Math.max(this.opts.minPointsQuadratic, MIN_FOR.quadratic) ? 'quadratic' : 'plane');
    const basis = (p: { x: number; y: number }) => {
      const u = (p.x - cx) / scale;
      const v = (p.y - cy) / scale;
      return model === 'plane' ? [1, u, v] : [1, u, v, u * u, u * v, v * v];
    };
    // robust: least squares, then drop points beyond 3 scaled MADs (blurry scores, wrong signs) and refit
    let use = this.pts;
    let coef = solveLeastSquares(use.map(basis), use.map((p) => p.z));
    if (!coef) return null;
    let outliers = 0;
    const res = this.pts.map((p) => p.z - dot(coef!, basis(p)));
    const mid = median(res);
    const mad = median(res.map((r) => Math.abs(r - mid))) * 1.4826;
    const limit = Math.max(3 * mad, 0.25);
    const kept = this.pts.filter((_, i) => Math.abs(res[i]!) <= limit);
    if (kept.length < n && kept.length >= basis(this.pts[0]!).length + 1) {
      const c2 = solveLeastSquares(kept.map(basis), kept.map((p) => p.z));
      if (c2) {
        coef = c2;
        use = kept;
        outliers = n - kept.length;
      }
    }
    const rms = Math.sqrt(use.reduce((a, p) => a + (p.z - dot(coef!, basis(p))) ** 2, 0) / use.length);
    const full = model === 'plane' ? [...coef, 0, 0, 0] : coef;
    return {
      model,
      coef: full,
      center: { x: cx, y: cy },
      scale,
      points: use.length,
      outliers,
      rms_um: rms,
      tilt_um_per_mm: { x: (full[1]! / scale) * 1000, y: (full[2]! / scale) * 1000 },
    };
  }
}

export function evaluate(f: SurfaceFit, x: number, y: number): number {
  const u = (x - f.center.x) / f.scale;
  const v = (y - f.center.y) / f.scale;
  return dot(f.coef, [1, u, v, u * u, u * v, v * v]);
}

function dot(a: number[], b: number[]): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}


/** Normal equations with a small ridge, solved by Gaussian elimination with partial pivoting. */
function solveLeastSquares(rows: number[][], ys: number[]): number[] | null {
  const k = rows[0]!.length;
  const A = Array.from({ length: k }, () => new Array<number>(k + 1).fill(0));
  for (let r = 0; r < rows.length; r++) {
    const b = rows[r]!;
    for (let i = 0; i < k; i++) {
      for (let j = 0; j < k; j++) A[i]![j]! += b[i]! * b[j]!;
      A[i]![k]! += b[i]! * ys[r]!;
    }
  }
  for (let i = 1; i < k; i++) A[i]![i]! += RIDGE * rows.length;
  for (let c = 0; c < k; c++) {
    let p = c;
    for (let r = c + 1; r < k; r++) if (Math.abs(A[r]![c]!) > Math.abs(A[p]![c]!)) p = r;
    if (Math.abs(A[p]![c]!) < 1e-12) return null;
    [A[c], A[p]] = [A[p]!, A[c]!];
    for (let r = 0; r < k; r++) {
      if (r === c) continue;
      const f = A[r]![c]! / A[c]![c]!;
      for (let j = c; j <= k; j++) A[r]![j]! -= f * A[c]![j]!;
    }
  }
  return A.map((row, i) => row[k]! / row[i]!);
}
