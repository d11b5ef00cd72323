// focusd simulate --calibrate: a focus stack taken on the virtual instrument (sim/stack.ts, tissue apart from the
// slides to be scanned), calibrated by the same code as `focusd calibrate` (models/calibrate-stack.ts), and the
// calibrated bundle the simulation's daemon then scans with (scoring.model).
import { join } from 'node:path';
import { calibrate } from '../models/calibrate-stack.js';
import type { MagnitudeValidation, SignBand } from '../models/calibration.js';
import type { ModelManifest } from '../models/manifest.js';
import type { SynthScene } from '../sim/procedural.js';
import type { InstrumentName } from '../sim/instruments.js';
import { writeSimStack } from '../sim/stack.js';

export interface SimCalibrationOptions {
  instrument: InstrumentName;
  /** the stack goes to `<dir>/stack`, the calibrated bundle to `<dir>/bundle`. */
  dir: string;
  /** bundle to calibrate. */
  modelDir: string;
  /** tissue seed of the stack (its scenes are drawn on a stream apart from the slides'). */
  seed: number;
  positions?: number;
  zFromUm?: number;
  zToUm?: number;
  stepUm?: number;
  /** `focusd calibrate --fit-range` (null: its default, DEFAULT_FIT_RANGE_UM). */
  fitRangeUm?: number | null;
  robust?: boolean;
  /** the positions' scenes from their seeds (default procedural tissue), and what they are. */
  scene?: (seed: number, width: number, height: number, pixelSizeUm: number) => SynthScene;
  tissue?: string;
}


/** What a simulation report says about the calibrated bundle it scanned with. */
export interface SimCalibration {
  bundle: string;
  stack: { dir: string; instrument: InstrumentName; tissue: string; seed: number; positions: number; z_um: [number, number]; step_um: number; images: number; size: { width: number; height: number } };
  fit_range_um: number;
  robust: boolean;
  calibration: ModelManifest['calibration'];
  sign: { decision: string; n: number; agreement: number; p_model: number; p_inverted: number };
  /** the model's sign agreement per 1 µm band of |z| over the whole stack (the decision uses the fit range). */
  sign_by_abs_z: SignBand[];
  magnitude: {
    form: string;
    applied: boolean;
    choice: string;
    /** each form's fit on all slices and its held-out numbers (identity → fit). */
    forms: Record<string, { slope: number; intercept: number; passes: boolean; method: string; mae_um: { identity: number | null; fit: number | null }; boundary_error_um: { identity: number | null; fit: number | null }; reason: string } | null>;
  };
  time_s: number;
}

const r3 = (v: number | null | undefined) => (v === null || v === undefined || !Number.isFinite(v) ? null : Math.round(v * 1000) / 1000);

function formOf(v: MagnitudeValidation | null) {
  if (!v) return null;
  return {
    slope: r3(v.fitted.slope)!,
    intercept: r3(v.fitted.intercept)!,
    passes: v.applied,
    method: v.method,
    mae_um: v.heldout.mae_um,
    boundary_error_um: { identity: r3(v.heldout.boundary.identity.error_um), fit: r3(v.heldout.boundary.fit.error_um) },
    reason: v.reason,
  };
}

/** Takes the stack, calibrates the bundle on it and returns where the calibrated bundle is, with the numbers. */
export async function calibrateOnSimulatedStack(o: SimCalibrationOptions): Promise<SimCalibration> {
  const t0 = performance.now();
  const step = o.stepUm ?? 0.5;
  const stack = await writeSimStack({
    instrument: o.instrument,
    dir: join(o.dir, 'stack'),
    seed: o.seed,
    positions: o.positions ?? 8,
    zFromUm: o.zFromUm ?? -6,
    zToUm: o.zToUm ?? 6,
    stepUm: step,
    ...(o.scene ? { scene: o.scene, tissue: o.tissue ?? 'images' } : {}),
  });
  const bundle = join(o.dir, 'bundle');
  const report = (await calibrate({
    stackDir: stack.dir,
    outDir: bundle,
    modelDir: o.modelDir,
    pixelSizeUm: stack.pixel_size_um,
    measure: 'nvl',
    patches: 16,
    fitRangeUm: o.fitRangeUm ?? null,
    minAbsZUm: 1,
    robust: o.robust ?? false,
  })) as {
    fit_range_um: number;
    calibration: ModelManifest['calibration'];
    sign: { decision: string; n: number; agreement: number; p_model: number; p_inverted: number };
    sign_by_abs_z: SignBand[];
    magnitude: MagnitudeValidation;
    magnitude_forms: { signed: MagnitudeValidation; abs: MagnitudeValidation | null };
    magnitude_choice: string;
  };
  return {
    bundle,
    stack: {
      dir: stack.dir,
      instrument: stack.instrument,
      tissue: stack.tissue,
      seed: stack.seed,
      positions: stack.positions.length,
      z_um: [stack.z_um[0]!, stack.z_um[stack.z_um.length - 1]!],
      step_um: step,
      images: stack.images,
      size: stack.size,
    },
    fit_range_um: report.fit_range_um,
    robust: o.robust ?? false,
    calibration: report.calibration,
    sign: { decision: report.sign.decision, n: report.sign.n, agreement: r3(report.sign.agreement)!, p_model: report.sign.p_model, p_inverted: report.sign.p_inverted },
    sign_by_abs_z: report.sign_by_abs_z,
    magnitude: {
      form: report.calibration.magnitude ?? 'signed',
      applied: report.magnitude.applied,
      choice: report.magnitude_choice,
      forms: { signed: formOf(report.magnitude_forms.signed), abs: formOf(report.magnitude_forms.abs) },
    },
    time_s: Math.round((performance.now() - t0) / 100) / 10,
  };
}

/** Three lines for the simulate printout. */
export function calibrationLines(c: SimCalibration): string[] {
  const n = (v: number | null | undefined) => (v === null || v === undefined ? '–' : v.toFixed(2));
  const form = (name: string) => {
    const f = c.magnitude.forms[name];
    return f ? `${name} ${f.passes ? 'passes' : 'fails'} (MAE ${n(f.mae_um.identity)} → ${n(f.mae_um.fit)} µm, boundary ${n(f.boundary_error_um.identity)} → ${n(f.boundary_error_um.fit)} µm)` : `${name} –`;
  };
  const cal = c.calibration;
  return [
    `  calibrated bundle (stack: ${c.stack.positions} positions of ${c.stack.tissue} tissue, z ${c.stack.z_um[0]}..${c.stack.z_um[1]} µm in ${c.stack.step_um}, fit |z| <= ${c.fit_range_um} µm, ${c.time_s} s): ` +
      `sign ${cal.sign} (${c.sign.n} slices, ${(c.sign.agreement * 100).toFixed(0)} % agree), magnitude ${c.magnitude.applied ? c.magnitude.form : 'identity'}, slope ${n(cal.slope)}, intercept ${n(cal.intercept)}, guard band ${n(cal.guard_um ?? 0)} µm`,
    `    model sign agrees with z by |z|: ${c.sign_by_abs_z.map((b) => `${b.from_um}–${b.to_um} µm ${b.agreement === null ? '–' : `${Math.round(b.agreement * 100)} %`}`).join(', ')}`,
    `    held-out (${c.magnitude.forms.signed?.method ?? '–'}): ${form('signed')}; ${form('abs')}; chosen: ${c.magnitude.choice}`,
  ];
}
