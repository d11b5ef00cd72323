// Model bundle manifest (models/<bundle>/manifest.json); JSON Schema in docs/schemas/model-manifest.schema.json.

export interface ModelManifest {
  schema: 1;
  name: string;
  version: string;
  /** e.g. "focusnet-s (compact CNN)" or "inceptionv3+6fc (Senaras-style)". */
  architecture: string;
  /** how the model file is stored. */
  format: 'onnx' | 'tfjs-layers' | 'tfjs-graph';
  /** model file relative to the bundle (model.onnx, or model.json for tfjs). */
  file: string;
  /** sha256 (hex) of `file`; checked at load. */
  sha256: string;
  input: {
    name: string;
    layout: 'NCHW' | 'NHWC';
    /** patch size in pixels [height, width]. */
    size: [number, number];
    channel_order: 'RGB';
    /** µm per pixel the model was trained at; tiles of another pixel size are rescaled to it. */
    pixel_size_um: number;
    /** x_model = (x_8bit * scale - mean[c]) / std[c] */
    normalisation: { scale: number; mean: [number, number, number]; std: [number, number, number] };
  };
  outputs: {
    /** |defocus| in µm, shape [N,1], >= 0. */
    abs_um: string;
    /** logit of P(defocus > 0), shape [N,1]. */
    sign_logit: string;
    /** optional log-variance of abs_um (µm²), shape [N,1]. */
    log_var?: string;
  };
  /** sign convention: positive defocus = the specimen is above the focal plane (stage must move down), see docs/protocol.md. */
  output_semantics: string;
  /** trained range of |defocus|; outside it the model saturates. */
  range_um: [number, number];
  /**
   * Per-instrument calibration applied after the network, with sign handling: model (use the network's sign),
   * inverted (instrument's z axis is reversed), unrecoverable (this instrument gives no sign cue: report |d| with
   * sign_confidence 0.5 and let the controller probe). `magnitude` says where the line acts:
   *   - signed (or absent): signed_um = slope * raw_signed_um + intercept (a line through the signed output; it can
   *     correct a scale error and a shift of focus, not an over-read of |d| on both sides of focus);
   *   - abs: signed_um = sign * max(0, slope * |raw| + intercept) (a line in |d|: corrects a symmetric over- or
   *     under-read, e.g. |d| read 0.8 µm too large on both sides).
   * Unrecoverable: max(0, slope * |raw| + intercept) either way.
   */
  calibration: {
    slope: number;
    intercept: number;
    sign: 'model' | 'inverted' | 'unrecoverable';
    magnitude?: CalibrationMagnitude;
    /**
     * guard band (µm, default 0): a tile is in focus only when |defocus| ≤ tolerance − guard_um. Set by
     * `focusd calibrate` from the held-out readings' scatter at the tolerance (models/calibration.ts guardBandOf).
     */
    guard_um?: number;
    source: string;
    fitted_at?: string;
  };
  provenance?: Record<string, unknown>;
  metrics?: Record<string, unknown>;
}

/** Where a calibration's line acts: on the signed output (default) or on |output| (the sign is kept). */
export type CalibrationMagnitude = 'signed' | 'abs';

export interface PatchPrediction {
  /** calibrated signed defocus, µm. */
  defocus_um: number;
  /** P(sign is right), 0.5..1. */
  sign_confidence: number;
  /** optional std of |d| from the model, µm. */
  sigma_um: number | null;
}

/** Network outputs → calibrated prediction. The one place where calibration is applied. */
export function toPrediction(m: ModelManifest, absUm: number, signLogit: number, logVar?: number): PatchPrediction {
  const pPos = 1 / (1 + Math.exp(-signLogit));
  const cal = m.calibration;
  let sign = pPos >= 0.5 ? 1 : -1;
  let conf = Math.max(pPos, 1 - pPos);
  if (cal.sign === 'inverted') sign = -sign;
  if (cal.sign === 'unrecoverable') {
    sign = 1;
    conf = 0.5;
  }
  const raw = sign * Math.max(0, absUm);
  const calibrated =
    cal.sign === 'unrecoverable'
      ? Math.max(0, cal.slope * Math.abs(raw) + cal.intercept)
      : cal.magnitude === 'abs'
        ? sign * Math.max(0, cal.slope * Math.abs(raw) + cal.intercept)
        : cal.slope * raw + cal.intercept;
  return {
    defocus_um: calibrated,
    sign_confidence: conf,
    sigma_um: logVar === undefined ? null : Math.sqrt(Math.exp(logVar)) * Math.abs(cal.slope),
  };
}
