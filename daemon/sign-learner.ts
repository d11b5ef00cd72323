/**
 * Outcome learning of the model's sign on one instrument (docs/controller.md). Every probe, commanded
 * re-acquisition and z_offset is an experiment with a known z change; its outcome says whether the model's sign
 * was right. The evidence is kept per scanner + objective + model (sha256 and the bundle's calibration sign, since
 * a calibrated copy of the same network reports the other sign) as Beta counts per sign-confidence bin, and
 * persisted by the store so it survives restarts. Pure logic: the store is injected.
 */
import { median } from '../core/stats.js';
import type { ModelInfo, SignBinCounts, SignBinState, SignEvidenceKey, SignLearningState } from '../core/types.js';

/** Sign-confidence bin edges: [0.5, 0.8), [0.8, 0.95), [0.95, 1]. */
export const SIGN_BIN_EDGES = [0.5, 0.8, 0.95, 1] as const;
/**
 * |defocus| bin edges (µm): [0, 2.5), [2.5, ∞). On an instrument whose aberrations differ from the training optics the
 * sign cues can point one way near focus and another far from it (the virtual scanner's mirrored instrument reads
 * −3 µm as +), so each magnitude range learns its own direction. Cell = magnitude bin × 3 + confidence bin.
 */
// (A third range beyond 3.5 µm that never borrows was measured and not kept: docs/controller.md, Outcome learning.)
export const ABS_BIN_EDGES = [0, 2.5, Infinity] as const;
const NCONF = SIGN_BIN_EDGES.length - 1;
const NCELLS = NCONF * (ABS_BIN_EDGES.length - 1);

export type LearnerKey = SignEvidenceKey;
export type BinCounts = SignBinCounts;

/** Where the evidence lives (adapters/store.ts); loaded once per key, every experiment written at once. */
export interface EvidenceStore {
  loadEvidence(key: LearnerKey): BinCounts[];
  addEvidence(key: LearnerKey, bin: number, right: number, wrong: number, at: number): void;
  /** the most recent magnitude-gain observations (oldest first); a store without them starts from the prior. */
  loadGain?(key: LearnerKey, limit: number): { gain: number; at: number }[];
  addGain?(key: LearnerKey, gain: number, at: number): void;
}

/**
 * Magnitude gain: how many µm the model reads per µm of true defocus on this instrument (the virtual scanner's
 * procedural tiles read about 2× near 1–3 µm). Learned from the moves the controller sizes; only the size of moves
 * is divided by it, never the in/out verdict. Clamped to [GAIN_MIN, GAIN_MAX]: a gain below 1 enlarges moves, the
 * one direction in which a bad estimate can overshoot focus, so it is not allowed to go far.
 */
export const GAIN_MIN = 0.7;
export const GAIN_MAX = 3;
/** Observations kept per key (a rolling median follows an instrument that changes). */
export const GAIN_WINDOW = 32;

export interface LearnerSettings {
  /** posterior P(sign right) (or P(wrong), for a reversed sign) needed to trust it. */
  trust: number;
  /** pseudo-count of right signs of a bundle calibrated on a focus stack. */
  priorCalibrated: number;
  /** model sign confidence needed at all (controller.signConfidence): bins below it are never trusted. */
  signConfidence: number;
  /** magnitude-gain observations needed before the learned gain sizes moves (learning.gainMinExperiments). */
  gainMinExperiments?: number;
  /** until then, z_offsets are multiplied by this (learning.zOffsetPriorDamping). */
  zOffsetPriorDamping?: number;
}

/** What sizes a move: the model's |d| divided by `reacquire` (re-acquisitions, probes) or `zOffset` (z_offsets). */
export interface GainJudgement {
  reacquire: number;
  zOffset: number;
  /** the learned median, null before gainMinExperiments observations. */
  learned: number | null;
  experiments: number;
}

export interface Judgement {
  /** +1 use the model's sign, −1 reverse it, 0 unknown: probe. */
  direction: 1 | -1 | 0;
  p_right: number;
  bin: number;
}

export interface RecordResult {
  /** the learned direction of any bin changed. */
  changed: boolean;
  /** the pooled direction has just become −1: the evidence contradicts the bundle. */
  invertedDetected: boolean;
  state: SignLearningState;
}

interface Entry {
  key: LearnerKey;
  bins: { right: number; wrong: number }[];
  updatedAt: number | null;
  invertedDetected: boolean;
  /** magnitude-gain observations, oldest first, at most GAIN_WINDOW. */
  gains: number[];
  /** observations ever recorded in this process plus those loaded. */
  gainCount: number;
}

/** One string per learner key (a Map key). */
export function learnerKeyString(key: LearnerKey): string {
  return [key.scanner, key.objective, key.model_sha256, key.calibration_sign].join('\u0000');
}

export function learnerKey(scanner: string, objective: string, model: ModelInfo): LearnerKey {
  return {
    scanner,
    objective,
    model_sha256: model.sha256,
    calibration_sign: model.calibration?.sign ?? 'none',
    calibrated: model.calibration?.fitted ?? false,
  };
}

/** Confidence bin of a sign confidence. */
export function confBinOf(conf: number): number {
  for (let i = SIGN_BIN_EDGES.length - 2; i >= 0; i--) if (conf >= SIGN_BIN_EDGES[i]!) return i;
  return 0;
}

/** Cell (magnitude bin × confidence bin) of a tile's |defocus| and sign confidence. */
export function binOf(conf: number, absUm = 0): number {
  const m = absUm >= ABS_BIN_EDGES[1] ? 1 : 0;
  return m * NCONF + confBinOf(conf);
}

const confRange = (cell: number) => [SIGN_BIN_EDGES[cell % NCONF]!, SIGN_BIN_EDGES[(cell % NCONF) + 1]!] as const;
const absRange = (cell: number) => [ABS_BIN_EDGES[Math.floor(cell / NCONF)]!, ABS_BIN_EDGES[Math.floor(cell / NCONF) + 1]!] as const;

/** Experiments a bin needs before its own posterior is used instead of the pooled one. */
const MIN_BIN_EVIDENCE = 3;

const r3 = (v: number) => Math.round(v * 1000) / 1000;

export class SignLearner {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly s: LearnerSettings, private readonly store?: EvidenceStore) {}

  private prior(key: LearnerKey): { right: number; wrong: number } {
    // Beta(1, 1) plus, for a bundle calibrated on a stack, its pseudo-count of right signs
    return { right: 1 + (key.calibrated && key.calibration_sign !== 'unrecoverable' ? this.s.priorCalibrated : 0), wrong: 1 };
  }

  private entry(key: LearnerKey): Entry {
    const k = learnerKeyString(key);
    let e = this.entries.get(k);
    if (!e) {
      e = { key, bins: Array.from({ length: NCELLS }, () => ({ right: 0, wrong: 0 })), updatedAt: null, invertedDetected: false, gains: [], gainCount: 0 };
      for (const g of this.store?.loadGain?.(key, GAIN_WINDOW) ?? []) {
        e.gains.push(g.gain);
        e.updatedAt = Math.max(e.updatedAt ?? 0, g.at);
      }
      e.gainCount = e.gains.length;
      for (const c of this.store?.loadEvidence(key) ?? []) {
        const b = e.bins[c.bin];
        if (!b) continue;
        b.right += c.right;
        b.wrong += c.wrong;
        e.updatedAt = Math.max(e.updatedAt ?? 0, c.updated_at);
      }
      e.invertedDetected = this.pooledDirection(e) === -1;
      this.entries.set(k, e);
    }
    return e;
  }

  private dirOf(key: LearnerKey, right: number, wrong: number): { p: number; dir: 1 | -1 | 0 } {
    const pr = this.prior(key);
    const p = (pr.right + right) / (pr.right + pr.wrong + right + wrong);
    return { p, dir: p >= this.s.trust ? 1 : 1 - p >= this.s.trust ? -1 : 0 };
  }

  /** Evidence of the cells at trusted confidence (of one magnitude bin when given). */
  private pooledCounts(e: Entry, absBin?: number): { right: number; wrong: number } {
    let right = 0;
    let wrong = 0;
    e.bins.forEach((b, i) => {
      if (absBin !== undefined && Math.floor(i / NCONF) !== absBin) return;
      if (confRange(i)[1] > this.s.signConfidence) {
        right += b.right;
        wrong += b.wrong;
      }
    });
    return { right, wrong };
  }

  private pooledDirection(e: Entry): 1 | -1 | 0 {
    const { right, wrong } = this.pooledCounts(e);
    return this.dirOf(e.key, right, wrong).dir;
  }

  /** Should a sign of this confidence be used, and which way? Trusted only when the model is confident AND the posterior agrees. */
  judge(key: LearnerKey, conf: number, absUm = 0): Judgement {
    const bin = binOf(conf, absUm);
    const e = this.entry(key);
    const b = e.bins[bin]!;
    // a cell with little evidence of its own borrows that of its magnitude range, then of all trusted-confidence cells
    const range = this.pooledCounts(e, Math.floor(bin / NCONF));
    const all = this.pooledCounts(e);
    const use = b.right + b.wrong >= MIN_BIN_EVIDENCE ? b : range.right + range.wrong >= MIN_BIN_EVIDENCE ? range : all;
    const { p, dir } = this.dirOf(key, use.right, use.wrong);
    if (conf < this.s.signConfidence || key.calibration_sign === 'unrecoverable') return { direction: 0, p_right: p, bin };
    return { direction: dir, p_right: p, bin };
  }

  /** One experiment's outcome: was the model's (reported) sign of the tile right? */
  record(key: LearnerKey, conf: number, modelRight: boolean, now: number, absUm = 0): RecordResult {
    const e = this.entry(key);
    const bin = binOf(conf, absUm);
    const before = e.bins.map((b) => this.dirOf(key, b.right, b.wrong).dir);
    const b = e.bins[bin]!;
    if (modelRight) b.right++;
    else b.wrong++;
    e.updatedAt = now;
    this.store?.addEvidence(key, bin, modelRight ? 1 : 0, modelRight ? 0 : 1, now);
    const after = e.bins.map((x) => this.dirOf(key, x.right, x.wrong).dir);
    const pooled = this.pooledDirection(e);
    const inverted = pooled === -1 && !e.invertedDetected;
    e.invertedDetected = pooled === -1 ? true : pooled === 1 ? false : e.invertedDetected;
    return { changed: before.some((d, i) => d !== after[i]), invertedDetected: inverted, state: this.stateOf(e) };
  }

  /**
   * One sized move toward focus: at stage z1 the tile read d1 (signed, with the sign the move assumed), the move
   * changed z by dz, and the new acquisition reads d2 (signed; 0 for an in-focus landing whose sign is unknown).
   * With d = g·t and t2 = t1 + dz, g = (d2 − d1) / dz. Observations outside (0, 10) are noise, not a gain.
   */
  recordGain(key: LearnerKey, d1: number, d2: number, dz: number, now: number): number | null {
    if (Math.abs(dz) < 0.05) return null;
    const g = (d2 - d1) / dz;
    if (!(g > 0 && g < 10)) return null;
    const e = this.entry(key);
    e.gains.push(g);
    while (e.gains.length > GAIN_WINDOW) e.gains.shift();
    e.gainCount++;
    e.updatedAt = now;
    this.store?.addGain?.(key, g, now);
    return g;
  }

  /** The gains that size moves: the learned median once there is enough evidence, else the conservative prior. */
  gain(key: LearnerKey): GainJudgement {
    const e = this.entry(key);
    const min = this.s.gainMinExperiments ?? 3;
    if (e.gains.length < min) return { reacquire: 1, zOffset: 1 / (this.s.zOffsetPriorDamping ?? 0.5), learned: null, experiments: e.gains.length };
    const g = Math.min(GAIN_MAX, Math.max(GAIN_MIN, median(e.gains)));
    return { reacquire: g, zOffset: g, learned: r3(median(e.gains)), experiments: e.gains.length };
  }

  state(key: LearnerKey): SignLearningState {
    return this.stateOf(this.entry(key));
  }

  snapshot(): SignLearningState[] {
    return [...this.entries.values()].map((e) => this.stateOf(e));
  }

  private stateOf(e: Entry): SignLearningState {
    const prior = this.prior(e.key);
    const bins: SignBinState[] = e.bins.map((b, i) => {
      const { p, dir } = this.dirOf(e.key, b.right, b.wrong);
      const [alo, ahi] = absRange(i);
      return { lo: confRange(i)[0], hi: confRange(i)[1], abs_lo_um: alo, abs_hi_um: Number.isFinite(ahi) ? ahi : null, right: b.right, wrong: b.wrong, p_right: r3(p), direction: dir };
    });
    return {
      ...e.key,
      prior,
      bins,
      direction: this.pooledDirection(e),
      experiments: e.bins.reduce((a, b) => a + b.right + b.wrong, 0),
      inverted_detected: e.invertedDetected,
      magnitude: (() => {
        const g = this.gain(e.key);
        return { gain: r3(g.reacquire), z_offset_gain: r3(g.zOffset), learned: g.learned, experiments: g.experiments };
      })(),
      updated_at: e.updatedAt === null ? null : new Date(e.updatedAt).toISOString(),
    };
  }
}
