import { createHash } from 'node:crypto';
import type { FocusdConfig } from '../config/load.js';
import type { Context } from '../core/context.js';
import { evaluate, FocusSurface } from './focus-surface.js';
import { median } from '../core/stats.js';
import type { Component } from '../core/lifecycle.js';
import { LogThrottle } from '../core/log-throttle.js';
import type { Action, ActionType, DivergingSlide, LoopAlert, SurfacePrediction, TileHeader, TileOutcome } from '../core/types.js';
import { type EvidenceStore, type GainJudgement, type LearnerKey, learnerKey, learnerKeyString, SignLearner } from './sign-learner.js';

/**
 * Feedback controller (docs/controller.md). `FocusController` is the pure decision logic: scored tiles in,
 * actions out, time passed in, no I/O, so scripted tile streams test it. `Controller` is the Component that
 * feeds it from 'tile:scored' and emits 'action' (the outbox makes them durable and publishes them).
 */

export type ControllerSettings = FocusdConfig['controller'];

export interface RuntimeView {
  toleranceUm: number;
  dryRun: boolean;
}

/** A wrong-way landing read this many times the |d| the move started from proves the sign wrong (moveWorse). */
const PROOF_RATIO = 1.5;

/**
 * A move from a tile read within twice the tolerance: there an over-read |d| overshoots focus as a wrong sign would,
 * and a glass edge tile reads a few % tissue; beyond it, neither excuses a move that went worse.
 */
const nearFocus = (move: { absD0: number }, rt: RuntimeView) => move.absD0 <= 2 * rt.toleranceUm;

export type Rule = 'isolated' | 'probe' | 'probe_result' | 'retry' | 'wrong_way' | 'restore' | 'drift' | 'tilt' | 'revert' | 'audit';

export interface WhyTile {
  seq: number;
  index: number;
  attempt: number;
  defocus_um: number | null;
  sign_confidence: number | null;
  stage_z_um: number;
}

export interface Refusal {
  type: ActionType;
  limit: 'max_reacquire_per_tile' | 'rate_limit' | 'max_cumulative' | 'dead_band' | 'hysteresis';
  detail: string;
  slide: string;
  tile: number;
  seq: number;
}

export interface Decision {
  actions: Action[];
  refused: Refusal[];
  prediction: SurfacePrediction | null;
  /** sign_inverted_detected / loop_diverging raised by this tile. */
  alerts: LoopAlert[];
  /** wrong-way moves found on this tile (a re-acquisition that came back further from focus, or a z_offset judged worse). */
  wrongWay: number;
  /** z_offsets taken back on this tile. */
  reverted: number;
  /** audits of in-focus verdicts sent on this tile, and audits whose outcome this tile was (sharper or not). */
  audits: { sent: number; sharper: number; no_sharper: number };
  /** the learned sign evidence changed (experiments recorded). */
  learned: boolean;
}

interface Rec {
  seq: number;
  index: number;
  attempt: number;
  /** signed defocus when its sign is known, else |defocus| with sign 0. */
  d: number;
  sign: 1 | -1 | 0;
  oof: boolean;
  conf: number | null;
  z: number;
  /** surface prediction made before this tile was included. */
  pred: SurfacePrediction | null;
  /** running number of the slide's first-acquisition tissue tiles (the z_offset judgement's time axis). */
  n: number;
  /** where the sign came from: the model (times the learned direction) or a probe; null while unknown. */
  src: 'model' | 'probe' | null;
  /** learned direction applied to the model's sign (1 or −1) when src is model. */
  dir: 1 | -1;
}

interface Probe {
  seq: number;
  attempt: number;
  z0: number;
  absD0: number;
  unc0: number;
  /** sharpness of the probed acquisition (null: not measured). */
  sharp0: number | null;
  /** the model's own sign of the probed tile (before any learned direction) and its confidence. */
  modelSign: 1 | -1;
  conf: number | null;
  key: LearnerKey;
  /** the probe's z step: |d0| / the learned magnitude gain. */
  step: number;
}

/** A commanded re-acquisition waiting for its outcome (the stop-loss judges it). */
interface Move {
  attempt: number;
  z0: number;
  absD0: number;
  /** |defocus| of the tile's best acquisition so far: the move must not end further from focus than this. */
  baseAbs: number;
  /** sharpness of the tile's best acquisition so far (null: not measured). */
  baseSharp: number | null;
  unc0: number;
  /** tissue fraction of the acquisition the move started from. */
  tissue0: number;
  /** the sign the move assumed (model sign × learned direction, or a probe's). */
  effSign: 1 | -1;
  /** the model's sign when the move relied on it (evidence for the learner), 0 otherwise. */
  modelSign: 1 | -1 | 0;
  conf: number | null;
  key: LearnerKey;
  /** a move that already undoes a wrong one: no further correction after it (a restore to the best z at most). */
  corrective: boolean;
  /** a worse outcome proves the assumed sign wrong (false when both directions were already tried). */
  evidenceIfWorse: boolean;
  /** stage z and |d| of the tile's best acquisition so far (restore target). */
  bestZ: number;
  /** the stage z and signed reading the move's size was computed from (target = z − d / gain): a gain experiment. */
  sizedFrom: { z: number; d: number };
  /** an audit of an in-focus verdict (sized by the neighbours, not by the model): no gain experiment, no sign evidence. */
  audit?: boolean;
  /**
   * |d| of the reading whose sign this move tests, for the learner's magnitude cell (default absD0). A probe_result
   * tests the probed tile's first reading, not the probe's own (about twice as far out): filed under the probe's
   * |d|, the evidence against the model would land in another cell than the evidence for it.
   */
  learnAbs?: number;
}

/** What a z_offset rule asks sendZOffset for (before the limits). */
interface ZOffsetSpec {
  correction: number;
  tilt: Tilt | null;
  rule: Rule;
  tiles: WhyTile[];
  /** the sign the hysteresis and cooldown remember (0: a tilt-only z_offset has none). */
  zSign: 1 | -1 | 0;
  tiltOnly: boolean;
  signFrom: 'model' | 'probes' | 'mixed';
  evaluation: Omit<ZEval, 'correction' | 'plane' | 'after' | 'key' | 'seq'>;
  detail: (correction: number, clamped: boolean) => string;
}

/** A tile whose best focus an experiment established (a move or probe that came back sharper): the plan's error there. */
interface Settled {
  n: number;
  index: number;
  /** first-acquisition stage z − established best focus z (µm; > 0: the plan was above focus). */
  e: number;
}

/** A z_offset waiting for the tiles after it. */
interface ZEval {
  correction: number;
  /** the tilt the z_offset carried (µm per µm of stage travel from origin), null: a flat offset. */
  plane: Tilt | null;
  beforeAbs: number;
  unc: number;
  /** (n, |d|) of the run (taken at the old z for sure): its trend is what no correction would give. */
  old: [number, number][];
  /** (n, |d|) of the tiles taken after the correction reached the stage. */
  after: [number, number][];
  /** the sign of the run the correction assumed. */
  effSign: 1 | -1;
  /** the model's sign of the run and its confidence when the run's signs came from the model. */
  modelSign: 1 | -1 | 0;
  conf: number | null;
  key: LearnerKey;
  seq: number;
}

interface SlideState {
  window: Rec[];
  tilesSinceZ: number;
  lastZSign: 1 | -1 | 0;
  cumulativeUm: number;
  actionTimes: number[];
  reacquires: Map<number, number>;
  probes: Map<number, Probe>;
  surface: FocusSurface;
  seen: Set<string>;
  predictions: Map<string, SurfacePrediction | null>;
  moves: Map<number, Move>;
  /** the acquisition of each tile nearest focus so far (sharpest; lowest |defocus| without sharpness) and its z. */
  best: Map<number, Acq & { z: number }>;
  /** tiles already sent back to their best z. */
  restored: Set<number>;
  zEval: ZEval | null;
  wrongWay: number;
  /** first-acquisition tissue tiles so far. */
  n: number;
  /** stop-loss fired: every sign is probed, z_offsets only from probe-settled signs. */
  diverging: DivergingSlide | null;
  /** a z_offset made under the stop-loss was judged worse too: no z_offset at all on this slide. */
  zFrozen: boolean;
  /** the scanner's own focus plan: stage z of first acquisitions less the corrections sent before them (a plane). */
  plan: FocusSurface;
  /** extent of the first acquisitions in x and y (how long a row is). */
  rowSpan: { x: number; y: number; x0: number; x1: number; y0: number; y1: number } | null;
  /** stage position of the last first acquisition and the step that led to it (the scan's row direction). */
  lastPos: { x: number; y: number } | null;
  lastStep: { dx: number; dy: number } | null;
  /** every z_offset sent on the slide, with the first-acquisition count it was decided at. */
  corrections: Correction[];
  /** stage z and running number of each tile's first acquisition. */
  firstZ: Map<number, { z: number; n: number }>;
  /** the most recent tiles whose best focus was settled by experiment (the audit's evidence). */
  settled: Settled[];
  /** audits of in-focus verdicts on the slide: sent, came back sharper, came back no sharper. */
  audits: { sent: number; ok: number; failed: number };
}

/** A z_offset's tilt: the shift at (x, y) is z_offset_um + gx·(x − x0) + gy·(y − y0) (µm, stage µm). */
interface Tilt {
  x0: number;
  y0: number;
  gx: number;
  gy: number;
}

interface Correction {
  n: number;
  c0: number;
  tilt: Tilt | null;
}

/** More tiles a z_offset is judged on when its first judging tiles disagree on "worse" (evalZ). */
const EVAL_EXTRA_TILES = 2;

/** Was first acquisition n taken while one of the corrections may still have been on its way to the stage? */
function mayBeInFlight(cs: Correction[], n: number, settleTiles: number): boolean {
  return cs.some((k) => n > k.n && n - k.n <= settleTiles);
}

/** The shift a set of corrections puts on a stage position (µm). */
function shiftAt(cs: Correction[], x: number, y: number): number {
  let s = 0;
  for (const k of cs) s += k.c0 + (k.tilt ? k.tilt.gx * (x - k.tilt.x0) + k.tilt.gy * (y - k.tilt.y0) : 0);
  return s;
}

/** Settled tiles remembered per slide for the audit (only the most recent few count). */
const MAX_SETTLED = 16;

/** Surface points before a tilt is estimated at all. */
const MIN_TILT_POINTS = 6;

/** Slides remembered per controller; older ones are forgotten (a scanner works on one slide at a time). */
const MAX_SLIDES = 32;
/** Duplicate detection and prediction cache per slide, most recent entries. */
const MAX_SEEN = 4096;

const r3 = (v: number) => Math.round(v * 1000) / 1000;

/** Limits already spent on a slide before this process started (from the action history). */
export type SlideHistory = (scanner: string, slide: string) => { cumulativeUm: number; reacquires: Map<number, number> };

export class FocusController {
  private readonly slides = new Map<string, SlideState>();
  /** audits of in-focus verdicts per instrument (learner key) since start: came back sharper / no sharper. */
  private readonly auditTally = new Map<string, { ok: number; failed: number }>();
  readonly learner: SignLearner;

  /**
   * `minTissueFraction`: the config's `tissue.minFraction`, below which a tile is no_tissue. A tile that had barely more
   * (under twice that) and comes back without tissue after a move may simply have none (a speck that blur spread
   * over the threshold): that is not proof the move went the wrong way.
   */
  constructor(private readonly s: ControllerSettings, private readonly history?: SlideHistory, evidence?: EvidenceStore, private readonly minTissueFraction = 0) {
    this.learner = new SignLearner({ trust: s.learning.trust, priorCalibrated: s.learning.priorCalibrated, signConfidence: s.signConfidence, gainMinExperiments: s.learning.gainMinExperiments, zOffsetPriorDamping: s.learning.zOffsetPriorDamping }, evidence);
  }

  /** Slides where the stop-loss fired (most recent last). */
  diverging(): DivergingSlide[] {
    return [...this.slides.values()].flatMap((st) => (st.diverging ? [{ ...st.diverging, wrong_way_moves: st.wrongWay }] : []));
  }

  /** Surface prediction for a tile, as it was before this tile was scored (for the tile message). */
  predict(h: TileHeader): SurfacePrediction | null {
    const st = this.slides.get(slideKey(h));
    if (!st) return null;
    const k = `${h.seq}/${h.attempt}`;
    if (st.predictions.has(k)) return st.predictions.get(k) ?? null;
    return st.surface.predict(h.stage_um.x, h.stage_um.y, h.stage_um.z);
  }

  /** Cumulative z correction sent for a slide (µm). */
  cumulative(scanner: string, slide: string): number {
    return this.slides.get(`${scanner}\u0000${slide}`)?.cumulativeUm ?? 0;
  }

  onTile(o: TileOutcome, now: number, rt: RuntimeView): Decision {
    const h = o.header;
    const st = this.state(h);
    const out: Decision = { actions: [], refused: [], prediction: null, alerts: [], wrongWay: 0, reverted: 0, audits: { sent: 0, sharper: 0, no_sharper: 0 }, learned: false };
    const key = `${h.seq}/${h.attempt}`;
    // a tile delivered twice must not decide twice; its actions would have the same ids anyway
    if (st.seen.has(key)) {
      out.prediction = st.predictions.get(key) ?? null;
      return out;
    }
    remember(st.seen, key);
    const pred = st.surface.predict(h.stage_um.x, h.stage_um.y, h.stage_um.z);
    rememberMap(st.predictions, key, pred);
    out.prediction = pred;
    const raw = o.score.defocus_um;
    if (o.verdict === 'no_tissue' || raw === null) {
      if (h.attempt > 0) this.lostTissue(o, st, now, rt, out);
      return out;
    }

    const conf = o.score.sign_confidence;
    const lkey = learnerKey(h.scanner, h.objective, o.score.model);
    const modelSign: 1 | -1 = raw >= 0 ? 1 : -1;
    // the sign is used only when the model is confident AND this instrument's outcomes say which way it points;
    // on a slide where the stop-loss fired every sign is probed
    const dir = conf !== null && !st.diverging ? this.learner.judge(lkey, conf, Math.abs(raw)).direction : 0;
    const signKnown = dir !== 0;
    const d = signKnown ? dir * raw : raw;
    const oof = o.verdict === 'out_of_focus';
    const absD = Math.abs(d);
    const unc = o.score.uncertainty_um ?? 0;
    const { x, y, z } = h.stage_um;
    // moves are sized by |d| / the model's learned magnitude gain on this instrument; the verdict is the model's
    const gain = this.learner.gain(lkey);
    const ctx: DecideCtx = { o, st, now, rt, out, pred, d, lkey, modelSign, gain };
    const sharp = o.score.sharpness ?? null;
    const here: Acq = { abs: absD, sharp };
    const prevBest = st.best.get(h.tile.index);
    if (prevBest === undefined || nearer(prevBest, here, 0, 1) < 0) st.best.set(h.tile.index, { ...here, z });

    if (h.attempt > 0) {
      const probe = st.probes.get(h.tile.index);
      if (probe && h.attempt > probe.attempt) {
        st.probes.delete(h.tile.index);
        // the probe went up by |d0|: if that made it better the stage was below focus (d0 < 0), else above. Which
        // of the two images is nearer focus the tile's own sharpness says on any instrument; the scores only
        // when there is no sharpness
        const pm = this.margin(rt, probe.unc0, unc);
        const cmp = nearer({ abs: probe.absD0, sharp: probe.sharp0 }, here, pm);
        const sign0: 1 | -1 = cmp < 0 ? -1 : cmp > 0 ? 1 : absD < probe.absD0 ? -1 : 1;
        const d0 = sign0 * probe.absD0;
        const target = probe.z0 - sign0 * probe.step;
        // an experiment: a probe that came back sharper beyond the scores' uncertainty proves the stage was below
        // focus. One that came back blurrier does not prove the opposite (an overestimated |d| overshoots focus
        // too): the re-acquisition below (probe_result) settles it when it comes back sharper than the first
        if (probe.conf !== null && cmp < 0) {
          this.learn(ctx, probe.key, probe.conf, probe.modelSign === -1, probe.absD0);
        }
        st.surface.add(x, y, target);
        if (cmp !== 0) this.settle(st, h.tile.index, target);
        const rec = st.window.find((r) => r.seq === probe.seq);
        if (rec) {
          rec.d = d0;
          rec.sign = sign0;
          rec.src = 'probe';
        }
        // below focus: the probe already is the best estimate of focus (going on up would trust an |d| that
        // just proved to be off, and a probe that crossed focus also comes back sharper); above: re-acquire on
        // the other side of z0. A probe its sharpness shows blurrier is out of focus whatever the model reads
        // there (on optics it was not trained for it reads a probe 6 µm out as in focus)
        if (sign0 > 0 && (oof || cmp > 0)) {
          const sent = this.reacquire(ctx, target, 'probe_result', false,
            `probe at z ${r3(probe.z0)} + ${r3(probe.step)} µm scored ${r3(absD)} µm vs ${r3(probe.absD0)} µm before: stage was ${sign0 < 0 ? 'below' : 'above'} focus, re-acquire at best focus ${r3(target)} µm`,
            { effSign: sign0, modelSign: probe.conf !== null ? probe.modelSign : 0, corrective: true, baseAbs: probe.absD0, baseSharp: probe.sharp0, evidenceIfWorse: false, conf: probe.conf, key: probe.key, sizedFrom: { z: probe.z0, d: d0 }, learnAbs: probe.absD0 });
          // the probe spent the tile's last re-acquisition and left it blurrier: the scanner keeps the last image,
          // so go back to the best z seen (virtual scanner: a bump moved from 2.9 to 1.6 µm, probed to 4.7 µm, kept there)
          if (!sent && cmp > 0) this.restoreBest(ctx);
        } else if (cmp < 0 && oof && signKnown) {
          // the probe came back sharper but still out of focus (an over-read |d| overshot focus, an under-read one
          // fell short): where the landing's own sign is trusted, that is an ordinary retry from the landing,
          // judged like any move. Before, such tiles ended 1.0-1.4 µm out
          this.reacquireOof(ctx, true, 'retry');
        }
        this.checkDrift(ctx);
        return out;
      }
      const move = st.moves.get(h.tile.index);
      if (move && h.attempt > move.attempt) {
        st.moves.delete(h.tile.index);
        const m = this.margin(rt, move.unc0, unc);
        const cmpMove = nearer({ abs: move.baseAbs, sharp: move.baseSharp }, here, m);
        if (cmpMove > 0) {
          this.moveWorse(ctx, move, `re-acquisition of tile ${h.tile.index} at z ${r3(z)} is further from focus than its best acquisition (${sharpText(move.baseSharp, sharp)}scored ${r3(absD)} µm vs ${r3(move.baseAbs)} µm)`, `${r3(move.absD0)} → ${r3(absD)} µm`);
          return out;
        }
        if (cmpMove < 0 && move.modelSign !== 0 && move.conf !== null) this.learn(ctx, move.key, move.conf, move.modelSign === move.effSign, move.learnAbs ?? move.absD0);
        // a sized move toward focus that did not go the wrong way measures the model's magnitude gain, when the
        // landing's sign is trusted (an in-focus landing of unknown sign would only confirm the gain the move used)
        const d2 = signKnown ? d : null;
        if (!move.audit && d2 !== null && this.learner.recordGain(move.key, move.sizedFrom.d, d2, z - move.sizedFrom.z, now) !== null) out.learned = true;
        // a move that came back sharper and in focus settled where this tile's focus is
        // (the landing's z: its own reading is within the tolerance, and its sign may be the one being learned)
        if (cmpMove < 0 && !oof) this.settle(st, h.tile.index, z);
        if (move.audit && cmpMove < 0) {
          // the model read this tile in focus and it was not: it joins the drift evidence with the audit's sign
          this.auditOutcome(ctx, true);
          const rec = st.window.find((r) => r.index === h.tile.index);
          if (rec) {
            rec.oof = true;
            rec.d = move.sizedFrom.d;
            rec.sign = move.sizedFrom.d > 0 ? 1 : -1;
            rec.src = 'probe';
          }
          this.checkDrift(ctx);
        }
      }
      this.addToSurface(st, x, y, z, d, signKnown, oof, gain);
      // a tile sent back to its best z stays there: the moves from it have failed already
      if (oof && !st.restored.has(h.tile.index)) this.reacquireOof(ctx, signKnown, 'retry');
      return out;
    }

    st.tilesSinceZ++;
    st.n++;
    // the scanner's own plan at this tile: its stage z less the corrections surely applied to it (a tile taken
    // while a correction may still have been on its way says nothing)
    const settle = this.s.learning.settleTiles;
    if (!mayBeInFlight(st.corrections, st.n, settle)) st.plan.add(x, y, z - shiftAt(st.corrections, x, y));
    if (st.lastPos) st.lastStep = { dx: x - st.lastPos.x, dy: y - st.lastPos.y };
    const rs = st.rowSpan ?? { x: 0, y: 0, x0: x, x1: x, y0: y, y1: y };
    rs.x0 = Math.min(rs.x0, x);
    rs.x1 = Math.max(rs.x1, x);
    rs.y0 = Math.min(rs.y0, y);
    rs.y1 = Math.max(rs.y1, y);
    rs.x = rs.x1 - rs.x0;
    rs.y = rs.y1 - rs.y0;
    st.rowSpan = rs;
    st.lastPos = { x, y };
    st.firstZ.set(h.tile.index, { z, n: st.n });
    this.evalZ(ctx, absD, unc);
    this.addToSurface(st, x, y, z, d, signKnown, oof, gain);
    const sign: 1 | -1 | 0 = oof && signKnown ? (d > 0 ? 1 : -1) : 0;
    st.window.push({ seq: h.seq, index: h.tile.index, attempt: h.attempt, d: sign ? d : absD, sign, oof, conf, z, pred, n: st.n, src: sign ? 'model' : null, dir: dir === -1 ? -1 : 1 });
    while (st.window.length > Math.max(this.s.drift.window, this.s.drift.consecutive)) st.window.shift();
    if (!oof) {
      this.audit(ctx, signKnown);
      return out;
    }
    // every blurry tile has to be replaced: re-acquire it (a probe when the sign is unsure) ...
    this.reacquireOof(ctx, signKnown, 'isolated');
    // ... and when the blur is systematic, also move the focus for the tiles to come
    this.checkDrift(ctx);
    return out;
  }

  private auditOutcome(c: DecideCtx, sharper: boolean): void {
    const k = learnerKeyString(c.lkey);
    const t = this.auditTally.get(k) ?? { ok: 0, failed: 0 };
    if (sharper) {
      c.st.audits.ok++;
      c.out.audits.sharper++;
      t.ok++;
    } else {
      c.st.audits.failed++;
      c.out.audits.no_sharper++;
      t.failed++;
    }
    this.auditTally.set(k, t);
  }

  /** An experiment established the best focus of a tile: remember how far the scanner's plan was from it there. */
  private settle(st: SlideState, index: number, bestZ: number): void {
    const f = st.firstZ.get(index);
    if (!f || !Number.isFinite(bestZ)) return;
    st.settled = st.settled.filter((s) => s.index !== index);
    st.settled.push({ n: f.n, index, e: f.z - bestZ });
    while (st.settled.length > MAX_SETTLED) st.settled.shift();
  }

  /**
   * Audit of an in-focus verdict. On optics the model was not trained for it reads some tiles 1-3 µm out as in
   * focus (sa-reversed: −1 µm reads 0.02; `none`: ±1.5 reads 0.9), and from one image nothing can tell. Its
   * neighbours can: when the most recent tiles of the slide had their focus settled by experiment (a move or probe
   * that came back sharper) off by more than audit.minError tolerances on one side, the scanner's plan is off there (tilt, drift) and this
   * tile most likely too. It is re-acquired where they predict its focus; the move is judged by sharpness like
   * any other, and one that does not come back sharper is taken back (no sign evidence, no stop-loss count).
   */
  private audit(c: DecideCtx, signKnown: boolean): void {
    const a = this.s.audit;
    const st = c.st;
    const h = c.o.header;
    const tol = c.rt.toleranceUm;
    if (!a.enabled) return;
    if (st.audits.sent >= Math.max(2, Math.floor(a.maxShare * st.n)) || st.audits.failed >= st.audits.ok + 2) return;
    const { x, y, z } = h.stage_um;
    // a tile taken while a z_offset may still have been on its way: which plan it was taken at is not known
    const settle = this.s.learning.settleTiles;
    const inFlight = (n: number) => mayBeInFlight(st.corrections, n, settle);
    if (inFlight(st.n)) return;
    // the plan's error at each recent settled tile, plus the corrections sent since it was taken (they moved the plan)
    const recent = st.settled
      .filter((s) => s.n < st.n && st.n - s.n <= a.recentTiles && !inFlight(s.n))
      .sort((p, q) => q.n - p.n)
      .slice(0, a.minSettled)
      .map((s) => ({ ...s, e: s.e + shiftAt(st.corrections.filter((k) => k.n >= s.n), x, y) }));
    if (recent.length < a.minSettled) return;
    const side = Math.sign(recent[0]!.e);
    // a settled z is a landing read in focus, itself up to a tolerance off: only errors well beyond it count
    if (!recent.every((s) => Math.abs(s.e) > a.minError * tol && Math.sign(s.e) === side)) return;
    // the one nearest to the plan is the prediction: an audit that falls short still lands nearer focus, one that
    // overshoots may not, and a bump of the section (one tile several µm off) must not size it
    const pred = side * Math.min(...recent.map((s) => Math.abs(s.e)));
    // on an instrument where audits mostly came back no sharper the model is not blind: stop spending acquisitions
    const tally = this.auditTally.get(learnerKeyString(c.lkey));
    if (tally && tally.failed >= 3 && tally.failed > tally.ok) return;
    // a trusted sign that says the tile is on the other side, beyond half the tolerance, overrules the neighbours
    if (signKnown && Math.abs(c.d) > 0.5 * tol && Math.sign(c.d) !== side) return;
    const ok = this.reacquire(c, z - pred, 'audit', true,
      `read ${r3(c.d)} µm (in focus), but the ${recent.length} most recent settled tiles of the slide (${recent.map((s) => s.index).join(', ')}) were ${r3(Math.abs(pred))} µm and more ${pred > 0 ? 'above' : 'below'} focus at the scanner's plan: audit at their focus ${r3(z - pred)} µm`,
      { effSign: pred > 0 ? 1 : -1, modelSign: 0, corrective: true, baseAbs: Math.abs(c.d), baseSharp: c.o.score.sharpness ?? null, evidenceIfWorse: false, sizedFrom: { z, d: pred }, audit: true });
    if (ok) {
      st.audits.sent++;
      c.out.audits.sent++;
    }
  }

  /** A commanded move left the tile further from focus than its best acquisition: count it, learn, undo it. */
  private moveWorse(c: DecideCtx, move: Move, why: string, change: string): void {
    const st = c.st;
    const h = c.o.header;
    if (move.audit) this.auditOutcome(c, false);
    // wrong way: the tile is further from focus than before the move. From a tile read within twice the
    // tolerance that alone is no proof of a wrong sign: a move of an over-read |d| overshoots focus just as well
    // (procedural tiles: 0.35 µm read as 1.3, moved 1.3, landed 0.95 beyond), and a retake on the other side
    // would overshoot by twice the over-read. Such a tile goes back to its best z; it teaches the sign nothing
    // and does not count for the stop-loss. Unless the landing proves it: an overshoot lands at most a step
    // beyond focus (|d1| ≤ |d0|, over-read included, as both are read alike), a wrong sign a step further out
    // (|d1| ≈ 2·|d0|). A landing read beyond 1.5·|d0|, or one whose tissue is lost, went the wrong way
    // (measured on the virtual scanner's `none` optics, where the model's sign near 1 µm and at 2 µm differ:
    // 1.1 µm read, moved the wrong way, landed read 2.5–2.9 µm; restored five times on one slide, never learned).
    const landing = c.o.score.defocus_um;
    const proven = landing === null || !Number.isFinite(landing) || Math.abs(landing) >= PROOF_RATIO * move.absD0;
    const ambiguous = nearFocus(move, c.rt) && !proven;
    const evidence = move.evidenceIfWorse && !ambiguous;
    this.wrongWay(c, why, evidence);
    if (move.modelSign !== 0 && move.conf !== null && evidence) this.learn(c, move.key, move.conf, move.modelSign === -move.effSign, move.learnAbs ?? move.absD0);
    const rec = st.window.find((r) => r.index === h.tile.index && r.sign !== 0);
    if (rec) {
      rec.d = -rec.d;
      rec.sign = rec.sign === 1 ? -1 : 1;
      rec.src = 'probe';
    }
    if (!move.corrective && !ambiguous) {
      // the first acquisition's |d| with the opposite sign: best focus is on the other side of z0
      const target = move.sizedFrom.z + move.sizedFrom.d / c.gain.reacquire;
      this.reacquire(c, target, 'wrong_way', false,
        `moving ${move.effSign > 0 ? 'down' : 'up'} from z ${r3(move.z0)} made the tile worse (${change}): the sign was wrong, re-acquire at ${r3(target)} µm`,
        { effSign: move.effSign === 1 ? -1 : 1, modelSign: 0, corrective: true, baseAbs: move.baseAbs, baseSharp: move.baseSharp, evidenceIfWorse: false, sizedFrom: { z: move.sizedFrom.z, d: -move.sizedFrom.d } });
    } else {
      // both ways tried (or the first way was ambiguous) and this one is worse: the scanner keeps the last
      // image, so go back to the best z seen
      // (once per tile, beyond the per-tile limit: a limit must never leave a tile worse than it was)
      this.restore(c, { z: move.bestZ, abs: move.baseAbs });
    }
  }

  /**
   * A re-acquisition of a tile that had tissue came back without any: the move or probe blurred it beyond what
   * tissue detection finds (several µm). That is the worst outcome a move can have, not "nothing to do".
   */
  private lostTissue(o: TileOutcome, st: SlideState, now: number, rt: RuntimeView, out: Decision): void {
    const h = o.header;
    const move = st.moves.get(h.tile.index);
    const probe = st.probes.get(h.tile.index);
    if (!(move && h.attempt > move.attempt) && !(probe && h.attempt > probe.attempt)) return;
    const lkey = learnerKey(h.scanner, h.objective, o.score.model);
    const c: DecideCtx = { o, st, now, rt, out, pred: null, d: Number.NaN, lkey, modelSign: 1, gain: this.learner.gain(lkey) };
    if (move && h.attempt > move.attempt) {
      st.moves.delete(h.tile.index);
      if (move.tissue0 < 2 * this.minTissueFraction && nearFocus(move, rt)) {
        // its no_tissue verdict stands (published like any tile's). Measured on the virtual scanner with real
        // held-out tissue: edge tiles of bare glass read 6-7 % tissue 1.5-2 µm out of focus and 3 % nearer focus;
        // each such move was counted wrong-way, taught the learner a wrong sign and was retaken 3.5 µm out.
        // Not beyond twice the tolerance: there a tile full of tissue reads little of it too (virtual scanner,
        // colour-reversed: 84 % tissue read 3.6 µm out, moved the wrong way to 7.6 µm, and left there)
        return;
      }
      this.moveWorse(c, move, `re-acquisition of tile ${h.tile.index} at z ${r3(h.stage_um.z)} lost the tissue (blurred beyond detection; its best acquisition scored ${r3(move.baseAbs)} µm)`, `${r3(move.absD0)} µm → tissue lost`);
      return;
    }
    if (probe) {
      // the probe went up and lost the tissue: the stage was above focus, focus is on the other side of z0
      st.probes.delete(h.tile.index);
      const target = probe.z0 - probe.step;
      const sent = this.reacquire(c, target, 'probe_result', false,
        `probe at z ${r3(probe.z0)} + ${r3(probe.step)} µm lost the tissue: stage was above focus, re-acquire at best focus ${r3(target)} µm`,
        { effSign: 1, modelSign: 0, corrective: true, baseAbs: probe.absD0, baseSharp: probe.sharp0, evidenceIfWorse: false, sizedFrom: { z: probe.z0, d: probe.absD0 } });
      if (!sent) this.restoreBest(c);
    }
  }

  /** Re-acquire a tile at the z of its best acquisition so far (after a probe whose follow-up a limit refused). */
  private restoreBest(c: DecideCtx): void {
    const best = c.st.best.get(c.o.header.tile.index);
    if (best && best.z !== c.o.header.stage_um.z) this.restore(c, { z: best.z, abs: best.abs });
  }

  private restore(c: DecideCtx, best: { z: number; abs: number }): void {
    const h = c.o.header;
    if (c.st.restored.has(h.tile.index) || c.rt.dryRun) return;
    c.st.restored.add(h.tile.index);
    const target = best.z;
    c.out.actions.push(
      this.action(c, 'reacquire', r3(target - h.stage_um.z), 'restore',
        `re-acquisitions of tile ${h.tile.index} left it further from focus (${Number.isFinite(c.d) ? `${r3(Math.abs(c.d))} µm` : 'tissue lost'}) than at z ${r3(target)} (${r3(best.abs)} µm): re-acquire there`,
        [whyTile(c.o)], { target_z_um: r3(target), probe: false, stage_um: { ...h.stage_um } }),
    );
  }

  /** Two scores differ beyond their uncertainty: at least a quarter of the tolerance. */
  private margin(rt: RuntimeView, u0: number, u1: number): number {
    return Math.max(0.25 * rt.toleranceUm, u0, u1);
  }

  private learn(c: DecideCtx, key: LearnerKey, conf: number, modelRight: boolean, absUm: number): void {
    const r = this.learner.record(key, conf, modelRight, c.now, absUm);
    c.out.learned = true;
    if (r.invertedDetected) {
      const h = c.o.header;
      const st = r.state;
      const pooled = st.bins.filter((b) => b.hi > this.s.signConfidence);
      const right = pooled.reduce((a, b) => a + b.right, 0);
      const wrong = pooled.reduce((a, b) => a + b.wrong, 0);
      c.out.alerts.push({
        reason: 'sign_inverted_detected',
        detail:
          `on ${h.scanner} (${h.objective}) the model's sign was wrong in ${wrong} of ${right + wrong} experiments ` +
          `(bundle calibration: ${st.calibration_sign}${st.calibrated ? ', fitted on a focus stack' : ', not fitted'}); the controller now uses the reversed sign. ` +
          `Recalibrate the bundle on this instrument (focusd calibrate).`,
        scanner: h.scanner,
        slide: h.slide,
        objective: h.objective,
        learning: st,
      });
    }
  }

  /**
   * Counts a wrong-way move. Only moves that trusted the model's sign count for the stop-loss: a move whose sign a
   * probe settled (probe_result, the way back) failed on |d|, and probing everything would change nothing there.
   */
  private wrongWay(c: DecideCtx, why: string, signDriven: boolean): void {
    const st = c.st;
    c.out.wrongWay++;
    if (!signDriven) return;
    st.wrongWay++;
    if (st.wrongWay >= this.s.learning.maxWrongWay) this.diverge(c, `${st.wrongWay} wrong-way moves on this slide (limit ${this.s.learning.maxWrongWay}); last: ${why}`);
  }

  /** Stop-loss: freeze z_offsets on the slide and probe every sign from now on. */
  private diverge(c: DecideCtx, reason: string): void {
    const st = c.st;
    if (st.diverging) return;
    const h = c.o.header;
    st.diverging = { scanner: h.scanner, slide: h.slide, since: new Date(c.now).toISOString(), reason, wrong_way_moves: st.wrongWay };
    // drift evidence gathered with the untrusted signs must not drive anything
    st.window = [];
    c.out.alerts.push({
      reason: 'loop_diverging',
      detail: `slide ${h.slide}: ${reason}; the model's sign is no longer used on this slide: every sign is probed, z_offsets only from probe-settled signs`,
      scanner: h.scanner,
      slide: h.slide,
      objective: h.objective,
      diverging: { ...st.diverging },
    });
  }

  /**
   * Judges the last z_offset on the first tiles taken after it, against what no correction would have given: the
   * growing trend of |defocus| over the run that triggered it (taken at the old z), so a tilt or a drift that goes
   * on is not blamed on the correction. A wrong-way z_offset adds |c| to the error, a right one
   * removes it: beyond half of it (and the scores' uncertainty) the z_offset is judged, and a worse one taken back.
   */
  private evalZ(c: DecideCtx, absD: number, unc: number): void {
    const ev = c.st.zEval;
    if (!ev) return;
    const n = c.st.n;
    // the tiles in flight may or may not have been taken at the new z: they judge nothing
    if (c.st.tilesSinceZ <= this.s.learning.settleTiles) return;
    ev.after.push([n, absD]);
    ev.unc = Math.max(ev.unc, unc);
    if (ev.after.length < this.s.learning.evalTiles) return;
    const cf = trend(ev.old);
    const excesses = ev.after.map(([k, v]) => v - cf(k));
    const excess = median(excesses);
    const after = median(ev.after.map(([, v]) => v));
    const m = Math.max(0.5 * c.rt.toleranceUm, ev.unc);
    const half = Math.abs(ev.correction) / 2;
    const threshold = Math.max(m, half);
    const worse = excess > threshold;
    // a wrong-way z_offset makes every tile after it worse; an isolated blur (a bump of the section) only its own
    // tile. When the judging tiles disagree, two more decide (two bumps among three tiles once reverted a right
    // tilt z_offset on a perfect scorer and put the slide under the stop-loss)
    if (worse && Math.min(...excesses) <= threshold && ev.after.length < this.s.learning.evalTiles + EVAL_EXTRA_TILES) return;
    c.st.zEval = null;
    if (worse) {
      if (ev.modelSign !== 0 && ev.conf !== null) this.learn(c, ev.key, ev.conf, ev.modelSign === -ev.effSign, ev.beforeAbs);
      this.revert(c, ev, after);
      c.st.wrongWay++;
      c.out.wrongWay++;
      if (c.st.diverging) c.st.zFrozen = true;
      this.diverge(c, `the z_offset of ${r3(ev.correction)} µm made the next tiles worse (median |defocus| ${r3(after)} µm, ${r3(excess)} µm more than without it)`);
    } else if (excess < -threshold && ev.modelSign !== 0 && ev.conf !== null) {
      this.learn(c, ev.key, ev.conf, ev.modelSign === ev.effSign, ev.beforeAbs);
    }
  }

  private revert(c: DecideCtx, ev: ZEval, after: number): void {
    const st = c.st;
    const correction = r3(-ev.correction);
    const tilt = ev.plane ? { ...ev.plane, gx: -ev.plane.gx, gy: -ev.plane.gy } : null;
    if (!c.rt.dryRun) {
      st.cumulativeUm = r3(st.cumulativeUm + correction);
      st.corrections.push({ n: st.n, c0: correction, tilt });
    }
    st.lastZSign = 0;
    st.tilesSinceZ = 0;
    st.window = [];
    c.out.reverted++;
    const detail = `the z_offset of ${r3(ev.correction)} µm (tile seq ${ev.seq}) made the next tiles worse (median |defocus| ${r3(ev.beforeAbs)} µm before, ${r3(after)} µm after): take it back`;
    c.out.actions.push(this.action(c, 'z_offset', correction, 'revert', detail, [whyTile(c.o)], { stage_um: { ...c.o.header.stage_um }, ...planeOf(tilt) }, { cumulative_um: st.cumulativeUm, clamped: false }));
  }

  private reacquireOof(c: DecideCtx, signKnown: boolean, rule: 'isolated' | 'retry'): void {
    const h = c.o.header;
    const d = c.d;
    const conf = c.o.score.sign_confidence;
    const absD = Math.abs(d);
    if (signKnown) {
      const effSign: 1 | -1 = d >= 0 ? 1 : -1;
      this.reacquire(c, h.stage_um.z - d / c.gain.reacquire, rule, false,
        `defocus ${r3(d)} µm beyond ±${c.rt.toleranceUm} µm (sign confidence ${conf}${effSign !== c.modelSign ? ', sign reversed as learned on this instrument' : ''}${sizedBy(c.gain.reacquire)}); re-acquire at best focus`,
        { effSign, modelSign: c.modelSign, corrective: false, baseAbs: c.st.best.get(h.tile.index)?.abs ?? absD, baseSharp: c.st.best.get(h.tile.index)?.sharp ?? c.o.score.sharpness ?? null, evidenceIfWorse: true, sizedFrom: { z: h.stage_um.z, d } });
    } else {
      const step = absD / c.gain.reacquire;
      // always up: a probe toward the side the unsure model or the instrument's outcomes lean to was measured and
      // not kept (virtual scanner, held-out tissue, seeds 1-3: `none` optics 1.36 -> 1.51 acquisitions per tile on
      // slide 2, no yield gained), as the model's sign is structured by |d| there and the lean follows the wrong part.
      // Toward the side the slide's two most recent settled tiles place focus: also measured, not kept. Paired over
      // seeds 1-12, all instruments (docs/controller.md, sign by probe): 1.5 fewer acquisitions per first slide, yield
      // unchanged, but 0.2 more wrong-way moves per later slide (the directed probes' outcomes are tiles on one side of
      // focus; not learning from them still left +0.13)
      const ok = this.reacquire(c, h.stage_um.z + step, 'probe', true,
        `|defocus| ${r3(absD)} µm beyond ±${c.rt.toleranceUm} µm with ${c.st.diverging ? 'the stop-loss active on this slide' : conf === null || conf < this.s.signConfidence ? `sign confidence ${conf} < ${this.s.signConfidence}` : `the model's sign not yet confirmed on this instrument`}: probe at z + |d|${sizedBy(c.gain.reacquire)} to learn the sign`);
      if (ok) c.st.probes.set(h.tile.index, { seq: h.seq, attempt: h.attempt, z0: h.stage_um.z, absD0: absD, unc0: c.o.score.uncertainty_um ?? 0, sharp0: c.o.score.sharpness ?? null, modelSign: c.modelSign, conf, key: c.lkey, step });
    }
  }

  /**
   * A scored tile's best focus for the focus surface: z − d / gain where the sign is trusted; an in-focus tile of
   * unknown sign is as likely above as below focus, so its best estimate is its own z (adding z ∓ |d| put up to a
   * tolerance of random error into the surface, and the tilt rule acted on it); an out-of-focus tile of unknown sign
   * waits for its probe.
   */
  private addToSurface(st: SlideState, x: number, y: number, z: number, d: number, signKnown: boolean, oof: boolean, gain: GainJudgement): void {
    if (signKnown) st.surface.add(x, y, z - d / gain.reacquire);
    else if (!oof) st.surface.add(x, y, z);
  }

  private reacquire(
    c: DecideCtx,
    targetZ: number,
    rule: Rule,
    probe: boolean,
    detail: string,
    move?: Pick<Move, 'effSign' | 'modelSign' | 'corrective' | 'baseAbs' | 'baseSharp' | 'evidenceIfWorse' | 'sizedFrom'> & Partial<Pick<Move, 'conf' | 'key' | 'audit' | 'learnAbs'>>,
  ): boolean {
    const h = c.o.header;
    const dry = c.rt.dryRun;
    if (!dry) {
      const n = c.st.reacquires.get(h.tile.index) ?? 0;
      if (n >= this.s.limits.maxReacquirePerTile) {
        this.refuse(c, 'reacquire', 'max_reacquire_per_tile', `tile ${h.tile.index} was re-acquired ${n} times (limit ${this.s.limits.maxReacquirePerTile})`);
        return false;
      }
      if (!this.rateOk(c, 'reacquire')) return false;
      c.st.reacquires.set(h.tile.index, n + 1);
    }
    const zOff = r3(targetZ - h.stage_um.z);
    if (move && !dry) {
      const best = c.st.best.get(h.tile.index);
      c.st.moves.set(h.tile.index, {
        conf: c.o.score.sign_confidence,
        key: c.lkey,
        ...move,
        attempt: h.attempt,
        z0: h.stage_um.z,
        absD0: Math.abs(c.o.score.defocus_um ?? 0),
        tissue0: c.o.score.tissue_fraction,
        unc0: c.o.score.uncertainty_um ?? 0,
        bestZ: best?.z ?? h.stage_um.z,
      });
    }
    c.out.actions.push(
      this.action(c, 'reacquire', zOff, rule, detail, [whyTile(c.o)], {
        target_z_um: r3(targetZ),
        probe,
        stage_um: { ...h.stage_um },
      }),
    );
    return true;
  }

  private checkDrift(c: DecideCtx): void {
    const st = c.st;
    const tol = c.rt.toleranceUm;
    const { consecutive, window, share, cooldownTiles, hysteresisUm } = this.s.drift;
    // stop-loss: on a slide where the loop made things worse, no z_offset rests on the model's sign any more; the
    // focus is still followed where probes settled the sign (experiments, not trust), unless one of those failed too
    if (st.diverging && st.zFrozen) return;
    if (st.lastZSign !== 0 && st.tilesSinceZ < cooldownTiles) return;
    const known = st.window.filter((r) => r.oof && r.sign !== 0 && (!st.diverging || r.src === 'probe'));
    if (known.length === 0) return;
    let run: Rec[] | null = null;
    let how = '';
    // rule 1: the last `consecutive` tissue tiles all out of focus in the same direction
    const tail = st.window.slice(-consecutive);
    if (tail.length === consecutive && tail.every((r) => r.oof && r.sign !== 0 && r.sign === tail[0]!.sign)) {
      run = tail;
      how = `${consecutive} consecutive tiles out of focus ${tail[0]!.sign > 0 ? 'above' : 'below'} focus`;
    } else if (st.window.length >= window) {
      // rule 2: a share of the full recent window out of focus in the same direction
      const recent = st.window.slice(-window);
      for (const sgn of [1, -1] as const) {
        const same = recent.filter((r) => r.oof && r.sign === sgn);
        if (same.length / recent.length >= share) {
          run = same;
          how = `${same.length} of the last ${recent.length} tiles out of focus ${sgn > 0 ? 'above' : 'below'} focus (share ≥ ${share})`;
        }
      }
    }
    if (!run) {
      this.checkTilt(c);
      return;
    }
    const sgn = run[0]!.sign as 1 | -1;
    const mag = median(run.map((r) => Math.abs(r.d)));
    // tilt: the surface fitted before the run began already predicted its first tile's defocus, so the focal
    // plane did not move, the scanner just does not follow it. Later run tiles cannot judge this: the surface
    // already contains the run (and in a raster scan a new row looks like a tilt in y).
    const first = run[0]!;
    // the surface holds corrected defocus (d / gain), so the run's first tile is compared in the same units
    // (under the stop-loss the surface holds points the model's sign placed: only the probes' drift rule applies)
    const explained = !st.diverging && first.pred !== null && Math.abs(first.d / c.gain.reacquire - first.pred.defocus_um) <= tol / 2;
    const rule: Rule = explained ? 'tilt' : 'drift';
    // sized by the learned gain; before there is evidence, damped (an overestimated |d| would overshoot every
    // tile still to come, and a slide's last tiles cannot judge a z_offset any more)
    // a drift goes on while the correction is on its way: aim past focus the way it goes, but only from a run read
    // beyond the tolerance by more than the lead (a run read just past it may be the model's noise near focus, and a
    // lead would then push the next tiles the wrong way: measured, docs/controller.md)
    const lead = rule === 'drift' && mag > tol + this.s.drift.leadUm ? this.s.drift.leadUm : 0;
    let correction = (-sgn * mag) / c.gain.zOffset - sgn * lead;
    if (rule === 'tilt' && c.pred) correction = -c.pred.defocus_um;
    const tilt = rule === 'tilt' ? this.tiltOf(c) : null;
    // a z_offset moves every tile still to come: it needs the run beyond the tolerance itself, and a reversal more.
    // Under a calibrated bundle's guard band the run's tiles can be out of focus and still within the tolerance:
    // they are re-acquired, but move no plan (measured: letting them move it cost sa-reversed 91 -> 80 % on a slide)
    const reversing = st.lastZSign !== 0 && Math.sign(correction) !== st.lastZSign;
    const needed = reversing ? tol + hysteresisUm : tol;
    const tiles = run.map((r) => ({ seq: r.seq, index: r.index, attempt: r.attempt, defocus_um: r3(r.d), sign_confidence: r.conf, stage_z_um: r.z }));
    if (mag <= needed) {
      this.refuse(c, 'z_offset', 'hysteresis', reversing
        ? `median |defocus| ${r3(mag)} µm ≤ ${r3(needed)} µm needed to reverse the previous correction`
        : `median |defocus| ${r3(mag)} µm is within ±${r3(tol)} µm (out of focus only by the bundle's guard band): tiles are re-acquired, the plan is not moved`);
      return;
    }
    const fromModel = run.every((r) => r.src === 'model');
    const confs = run.map((r) => r.conf).filter((v): v is number => v !== null);
    this.sendZOffset(c, {
      correction,
      tilt,
      rule,
      tiles,
      zSign: correction > 0 ? 1 : -1,
      tiltOnly: false,
      signFrom: run.every((r) => r.src === 'probe') ? 'probes' : fromModel ? 'model' : 'mixed',
      evaluation: {
        beforeAbs: mag,
        unc: c.o.score.uncertainty_um ?? 0,
        old: run.map((r) => [r.n, Math.abs(r.d)] as [number, number]),
        effSign: sgn,
        modelSign: fromModel ? ((sgn * run[0]!.dir) as 1 | -1) : 0,
        conf: fromModel && confs.length ? median(confs) : null,
      },
      detail: (z, clamped) =>
        `${how}, median |defocus| ${r3(mag)} µm > ±${tol} µm` +
        (rule === 'tilt' ? `; the focus surface (${c.pred?.model}) predicted it: slide tilt, correct to the surface${tilt ? ` with a tilt of ${r3(tilt.gx * 1000)}, ${r3(tilt.gy * 1000)} µm/mm` : ''}` : '; the focus surface did not predict it: focus drift') +
        (rule === 'drift' ? sizedBy(c.gain.zOffset, c.gain.learned === null) : '') +
        (lead > 0 ? `; aimed ${lead} µm past focus the way the drift goes` : '') +
        (clamped ? `; clamped to ${r3(z)} µm by the limits` : ''),
    });
  }

  /**
   * Sends a z_offset within the limits (step, cumulative, dead band, rate), records it (corrections, the judgement
   * of the tiles after it) and restarts the drift window. In dry-run mode it is only published, marked dry_run, and
   * nothing is spent or judged. A tilt-only z_offset's flat part may be inside the dead band (its plane is what
   * matters) and is refused rather than cut when the cumulative limit is reached.
   */
  private sendZOffset(c: DecideCtx, z: ZOffsetSpec): void {
    const st = c.st;
    const dry = c.rt.dryRun;
    const lim = this.s.limits;
    let correction = z.correction;
    let clamped = false;
    if (Math.abs(correction) > lim.maxStepUm) {
      correction = Math.sign(correction) * lim.maxStepUm;
      clamped = true;
    }
    if (!dry && Math.abs(st.cumulativeUm + correction) > lim.maxCumulativeUm) {
      const allowed = Math.sign(correction) * (lim.maxCumulativeUm - Math.abs(st.cumulativeUm));
      if (z.tiltOnly || Math.sign(allowed) !== Math.sign(correction) || Math.abs(allowed) < lim.deadBandUm) {
        this.refuse(c, 'z_offset', 'max_cumulative', `slide already corrected by ${r3(st.cumulativeUm)} µm; limit ±${lim.maxCumulativeUm} µm`);
        return;
      }
      correction = allowed;
      clamped = true;
    }
    if (!z.tiltOnly && Math.abs(correction) < lim.deadBandUm) {
      this.refuse(c, 'z_offset', 'dead_band', `correction ${r3(correction)} µm inside the dead band ±${lim.deadBandUm} µm`);
      return;
    }
    if (!dry && !this.rateOk(c, 'z_offset')) return;
    if (!dry) {
      st.cumulativeUm = r3(st.cumulativeUm + correction);
      st.corrections.push({ n: st.n, c0: correction, tilt: z.tilt });
      st.zEval = { ...z.evaluation, correction, plane: z.tilt, after: [], key: c.lkey, seq: c.o.header.seq };
    }
    st.lastZSign = z.zSign;
    st.tilesSinceZ = 0;
    // only tiles taken after the correction may count for the next one
    st.window = [];
    c.out.actions.push(
      this.action(c, 'z_offset', r3(correction), z.rule, z.detail(correction, clamped), z.tiles, { stage_um: { ...c.o.header.stage_um }, ...planeOf(z.tilt) }, {
        cumulative_um: st.cumulativeUm,
        clamped,
        sign_from: z.signFrom,
      }),
    );
  }

  /**
   * A tilt alone: no run of blurry tiles in one direction (a slide tilted about the scanner's plan blurs both ends
   * of every row, each the other way), but the fitted surface says the next row will leave the tolerance at its
   * ends. Sends a tilted z_offset (rule 'tilt') that levels the row, judged like any other z_offset. Only on
   * trusted signs (not under the stop-loss), with a surface that fits the tiles (rms ≤ half the tolerance).
   */
  private checkTilt(c: DecideCtx): void {
    const st = c.st;
    const tol = c.rt.toleranceUm;
    if (st.diverging || !st.rowSpan) return;
    const f = st.surface.fit('plane');
    if (!f || f.points < 12 || f.rms_um > tol / 2) return;
    const tilt = this.tiltOf(c);
    if (!tilt) return;
    const span = Math.abs(tilt.gx) > 0 ? st.rowSpan.x : st.rowSpan.y;
    const g = Math.abs(tilt.gx) > 0 ? tilt.gx : tilt.gy;
    if (Math.abs(g) * span < tol) return;
    const { x, y } = c.o.header.stage_um;
    const q = st.plan.fit();
    const c0 = q ? evaluate(f, x, y) - evaluate(q, x, y) - shiftAt(st.corrections, x, y) : 0;
    const recent = st.window.filter((r) => r.sign !== 0);
    const fromModel = recent.length > 0 && recent.every((r) => r.src === 'model');
    const confs = recent.map((r) => r.conf).filter((v): v is number => v !== null);
    this.sendZOffset(c, {
      correction: c0,
      tilt,
      rule: 'tilt',
      tiles: [whyTile(c.o)],
      zSign: 0,
      tiltOnly: true,
      signFrom: fromModel ? 'model' : 'mixed',
      evaluation: {
        beforeAbs: median(st.window.map((r) => Math.abs(r.d))),
        unc: c.o.score.uncertainty_um ?? 0,
        old: st.window.map((r) => [r.n, Math.abs(r.d)] as [number, number]),
        effSign: c0 >= 0 ? -1 : 1,
        // a tilt has no single sign to learn from
        modelSign: 0,
        conf: fromModel && confs.length ? median(confs) : null,
      },
      detail: (z, clamped) =>
        `the focus surface (plane of ${f.points} tiles, rms ${r3(f.rms_um)} µm) is tilted ${r3(g * 1000)} µm/mm against the scanner's plan along its rows: ` +
        `${r3(Math.abs(g) * span)} µm over a row of ${r3(span / 1000)} mm, beyond ±${tol} µm; level the next rows` + (clamped ? `; clamped to ${r3(z)} µm by the limits` : ''),
    });
  }

  /**
   * The tilt a 'tilt' z_offset carries: the gradient, at this tile, of what separates the fitted focus surface from
   * where the scanner will put the next tiles (its own plan, fitted as a plane to the first acquisitions, plus the
   * corrections already sent). A flat offset right for this tile is wrong at the other end of the next row of a
   * raster scan; a scanner that ignores `plane` still gets that flat offset. Clamped to limits.maxTiltUmPerMm per
   * axis; null when the plan or the surface cannot be fitted or the tilt is negligible.
   */
  private tiltOf(c: DecideCtx): Tilt | null {
    const max = this.s.limits.maxTiltUmPerMm;
    if (!(max > 0)) return null;
    const st = c.st;
    // a plane, not the quadratic surface: the quadratic's local slope swings with every new row
    const f = st.surface.size >= MIN_TILT_POINTS ? st.surface.fit('plane') : null;
    const q = st.plan.fit();
    if (!f || !q) return null;
    const F = (x: number, y: number) => evaluate(f, x, y) - evaluate(q, x, y) - shiftAt(st.corrections, x, y);
    const { x, y } = c.o.header.stage_um;
    const h = 100;
    const lim = max / 1000;
    const share = this.s.drift.tiltShare;
    const clamp = (g: number) => Math.max(-lim, Math.min(lim, share * g));
    // only along the scan's rows (the axis the last two first acquisitions moved along): across rows, focus change
    // and drift are one thing in a raster scan (each row comes later), and the drift rule follows it
    const along = st.lastStep && Math.abs(st.lastStep.dy) > Math.abs(st.lastStep.dx) ? 'y' : 'x';
    const gx = along === 'x' ? clamp((F(x + h, y) - F(x - h, y)) / (2 * h)) : 0;
    const gy = along === 'y' ? clamp((F(x, y + h) - F(x, y - h)) / (2 * h)) : 0;
    if (Math.abs(gx) < 2e-4 && Math.abs(gy) < 2e-4) return null;
    return { x0: x, y0: y, gx, gy };
  }

  private rateOk(c: DecideCtx, type: ActionType): boolean {
    const times = c.st.actionTimes;
    while (times.length && times[0]! <= c.now - 60_000) times.shift();
    if (times.length >= this.s.limits.maxActionsPerMinute) {
      this.refuse(c, type, 'rate_limit', `${times.length} actions for this slide in the last 60 s (limit ${this.s.limits.maxActionsPerMinute})`);
      return false;
    }
    times.push(c.now);
    return true;
  }

  private refuse(c: DecideCtx, type: ActionType, limit: Refusal['limit'], detail: string): void {
    const h = c.o.header;
    c.out.refused.push({ type, limit, detail, slide: h.slide, tile: h.tile.index, seq: h.seq });
  }

  private action(
    c: DecideCtx,
    type: ActionType,
    zOffset: number,
    rule: Rule,
    detail: string,
    tiles: WhyTile[],
    extra: Record<string, unknown>,
    whyExtra: Record<string, unknown> = {},
  ): Action {
    const h = c.o.header;
    const dry = c.rt.dryRun;
    // the same decision on the same tile always has the same id, so re-sent and re-decided commands deduplicate
    const id =
      (type === 'reacquire' ? 'rq-' : 'zo-') +
      createHash('sha256').update([h.scanner, h.slide, h.scan, h.seq, h.attempt, type, dry ? 'dry' : 'live'].join('\u0000')).digest('hex').slice(0, 24);
    return {
      id,
      type,
      z_offset_um: zOffset,
      scanner: h.scanner,
      slide: h.slide,
      scan: h.scan,
      tile: { ...h.tile, seq: h.seq, attempt: h.attempt },
      reason: `${rule}: ${detail}`,
      dry_run: dry,
      created_at: new Date(c.now).toISOString(),
      expires_at: new Date(c.now + this.s.actionTtlS * 1000).toISOString(),
      ...extra,
      why: { rule, detail, tiles, tolerance_um: c.rt.toleranceUm, ...whyExtra },
      predicted: c.pred,
    };
  }

  private state(h: TileHeader): SlideState {
    const k = slideKey(h);
    let st = this.slides.get(k);
    if (!st) {
      // a restarted daemon must not get a fresh budget for a slide it already corrected
      const spent = this.history?.(h.scanner, h.slide) ?? { cumulativeUm: 0, reacquires: new Map<number, number>() };
      st = {
        window: [],
        tilesSinceZ: 0,
        lastZSign: 0,
        cumulativeUm: r3(spent.cumulativeUm),
        actionTimes: [],
        reacquires: spent.reacquires,
        probes: new Map(),
        surface: new FocusSurface(this.s.surface),
        seen: new Set(),
        predictions: new Map(),
        moves: new Map(),
        best: new Map(),
        restored: new Set(),
        zEval: null,
        wrongWay: 0,
        n: 0,
        diverging: null,
        zFrozen: false,
        plan: new FocusSurface({ minPointsPlane: 6, minPointsQuadratic: Number.MAX_SAFE_INTEGER, maxPoints: this.s.surface.maxPoints }),
        lastPos: null,
        rowSpan: null,
        lastStep: null,
        corrections: [],
        firstZ: new Map(),
        settled: [],
        audits: { sent: 0, ok: 0, failed: 0 },
      };
      this.slides.set(k, st);
      if (this.slides.size > MAX_SLIDES) this.slides.delete(this.slides.keys().next().value!);
    }
    return st;
  }

  surfaceOf(scanner: string, slide: string): FocusSurface | null {
    return this.slides.get(`${scanner}\u0000${slide}`)?.surface ?? null;
  }
}

interface DecideCtx {
  o: TileOutcome;
  st: SlideState;
  now: number;
  rt: RuntimeView;
  out: Decision;
  pred: SurfacePrediction | null;
  /** the tile's defocus with the learned sign applied when trusted (else the model's value). */
  d: number;
  lkey: LearnerKey;
  modelSign: 1 | -1;
  /** the magnitude gains that size this tile's moves. */
  gain: GainJudgement;
}

/** Why a move is smaller (or larger) than the model's |d|, for `why.detail`. */
function sizedBy(g: number, prior = false): string {
  if (g === 1) return '';
  return prior ? `; damped to ${r3(1 / g)}× until the model's magnitude is learned on this instrument` : `; sized by |d| / ${r3(g)} (magnitude gain learned on this instrument)`;
}

/**
 * Least-squares line through (n, v), as a function; a flat median when the points cannot carry a slope. A falling
 * trend is not extrapolated: the counterfactual is never better than the run itself (the stop-loss must not fire
 * because the error would have shrunk anyway).
 */
function trend(pts: [number, number][]): (n: number) => number {
  const k = pts.length;
  const mx = pts.reduce((a, p) => a + p[0], 0) / k;
  const my = pts.reduce((a, p) => a + p[1], 0) / k;
  let sxx = 0;
  let sxy = 0;
  for (const [x, y] of pts) {
    sxx += (x - mx) ** 2;
    sxy += (x - mx) * (y - my);
  }
  if (k < 3 || sxx === 0) {
    const m = median(pts.map((p) => p[1]));
    return () => m;
  }
  const b = Math.max(0, sxy / sxx);
  return (n) => my + b * (n - mx);
}

/** One acquisition of a tile as the loop compares them: its score's |defocus| and its sharpness. */
interface Acq {
  abs: number;
  sharp: number | null;
}

/**
 * Two acquisitions of one tile are told apart by this sharpness ratio: measured through the optics model on held-out
 * real tissue and on procedural tiles, 0.5 µm of defocus from focus lowers the Brenner sharpness by 20-40 %, each
 * further µm by more than half of what is left (scripts/loop-read-curve.ts); the same tile at the same z differs by
 * its sensor noise, a few %.
 */
export const SHARPNESS_RATIO = 1.15;

/**
 * Is acquisition b of a tile nearer focus than a (−1), further (1), or can that not be told (0)? The tile's own
 * sharpness decides when both have it: a classical focus measure compared between two images of the same field is
 * right on any instrument, where the network's |defocus| can be fooled by aberrations it was not trained on (an
 * image 9 µm out read as in focus). Without sharpness, the scores' |defocus| beyond the margin.
 */
export function nearer(a: Acq, b: Acq, margin: number, ratio = SHARPNESS_RATIO): -1 | 0 | 1 {
  if (a.sharp !== null && b.sharp !== null && a.sharp > 0 && b.sharp > 0) {
    const r = b.sharp / a.sharp;
    if (ratio <= 1) return r > 1 ? -1 : r < 1 ? 1 : 0;
    if (r >= ratio) return -1;
    if (r <= 1 / ratio) return 1;
    // far from focus a focus measure flattens out: 4 and 9 µm out can be within the ratio of each other, and a
    // move from one to the other went on the wrong way again as a 'retry' (to 17 µm). The scores may then say
    // "further" beyond the margin, never "nearer": a model fooled by the optics reads 9 µm out as in focus
    return b.abs > a.abs + margin ? 1 : 0;
  }
  return b.abs < a.abs - margin ? -1 : b.abs > a.abs + margin ? 1 : 0;
}

/** The action's `plane` field (docs/mqtt.md): how the shift changes with stage position. */
function planeOf(t: Tilt | null): { plane?: { origin_um: { x: number; y: number }; dz_dx_um_per_mm: number; dz_dy_um_per_mm: number } } {
  return t ? { plane: { origin_um: { x: r3(t.x0), y: r3(t.y0) }, dz_dx_um_per_mm: r3(t.gx * 1000), dz_dy_um_per_mm: r3(t.gy * 1000) } } : {};
}

function sharpText(base: number | null, now: number | null): string {
  return base !== null && now !== null && base > 0 ? `sharpness ${r3(now / base)}× its best, ` : '';
}

function slideKey(h: { scanner: string; slide: string }): string {
  return `${h.scanner}\u0000${h.slide}`;
}

function whyTile(o: TileOutcome): WhyTile {
  const h = o.header;
  return {
    seq: h.seq,
    index: h.tile.index,
    attempt: h.attempt,
    defocus_um: o.score.defocus_um === null ? null : r3(o.score.defocus_um),
    sign_confidence: o.score.sign_confidence,
    stage_z_um: h.stage_um.z,
  };
}

function remember(set: Set<string>, k: string): void {
  set.add(k);
  if (set.size > MAX_SEEN) set.delete(set.values().next().value!);
}

function rememberMap<V>(m: Map<string, V>, k: string, v: V): void {
  m.set(k, v);
  if (m.size > MAX_SEEN) m.delete(m.keys().next().value!);
}

/** The Component: 'tile:scored' in, 'action' out; refusals by the safety limits are logged as warnings. */
export interface ControllerDeps {
  /** the store (adapters/store.ts): limits already spent on a slide and the learned sign evidence survive a restart. */
  store?: { slideLimits: SlideHistory } & EvidenceStore & { recordLoopEvent?(e: LoopEventRow): void; evidenceKeys?(scanner?: string): LearnerKey[] };
}

/** One loop event as the store keeps it for the nightly report. */
export interface LoopEventRow {
  at: number;
  scanner: string;
  slide: string;
  kind: 'wrong_way' | LoopAlert['reason'];
  detail: string;
}

export class Controller implements Component {
  readonly name = 'controller';
  private off: (() => void) | null = null;
  private logic: FocusController | null = null;
  /** a limit that refuses every tile of a slide is logged once per 10 s per slide and limit. */
  private readonly refusedLog = new LogThrottle(10_000);

  constructor(private readonly ctx: Context, private readonly deps: ControllerDeps = {}) {}

  async start(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const store = this.deps.store;
    this.logic = new FocusController(this.ctx.config.controller, store ? (scanner, slide) => store.slideLimits(scanner, slide) : undefined, store, this.ctx.config.tissue.minFraction);
    this.off = this.ctx.events.on('tile:scored', (o) => this.handle(o));
    // what this scanner learned before the restart is in status and /metrics from the start
    for (const k of store?.evidenceKeys?.() ?? []) this.logic.learner.state(k);
    this.refreshLoop();
  }

  async stop(): Promise<void> {
    this.off?.();
    this.off = null;
  }

  /** For the MQTT tile message: the focus-surface prediction of this tile (before it was scored). */
  predict(h: TileHeader): SurfacePrediction | null {
    return this.logic?.predict(h) ?? null;
  }


  private refreshLoop(): void {
    if (!this.logic) return;
    const loop = this.ctx.metrics.loop;
    loop.sign_learning = this.logic.learner.snapshot();
    const div = this.logic.diverging();
    // slides forgotten by the controller stay listed until 32 newer ones push them out
    for (const d of div) {
      const i = loop.diverging_slides.findIndex((x) => x.scanner === d.scanner && x.slide === d.slide);
      if (i >= 0) loop.diverging_slides[i] = d;
      else loop.diverging_slides.push(d);
    }
    while (loop.diverging_slides.length > 32) loop.diverging_slides.shift();
  }

  private record(e: LoopEventRow): void {
    try {
      this.deps.store?.recordLoopEvent?.(e);
    } catch (err) {
      this.ctx.logger.error('controller: cannot record loop event', { err: (err as Error).message, ...e });
    }
  }

  private handle(o: TileOutcome): void {
    if (!this.logic) return;
    let d: Decision;
    try {
      d = this.logic.onTile(o, Date.now(), this.ctx.runtime);
    } catch (err) {
      // a controller bug must not take the scoring down; it is logged with the tile it failed on
      this.ctx.logger.error('controller failed on tile', { err: (err as Error).message, stack: (err as Error).stack, slide: o.header.slide, seq: o.header.seq });
      return;
    }
    const au = this.ctx.metrics.loop.audits;
    au.sent += d.audits.sent;
    au.sharper += d.audits.sharper;
    au.no_sharper += d.audits.no_sharper;
    if (d.learned || d.wrongWay || d.reverted || d.alerts.length) {
      const loop = this.ctx.metrics.loop;
      loop.wrong_way_moves += d.wrongWay;
      loop.z_offsets_reverted += d.reverted;
      const dirs = (xs: typeof loop.sign_learning) => xs.map((x) => `${x.direction}/${x.bins.map((b) => b.direction).join(',')}/${x.magnitude.gain.toFixed(1)}`).join(';');
      const before = dirs(loop.sign_learning);
      this.refreshLoop();
      const h = o.header;
      for (let i = 0; i < d.wrongWay; i++) this.record({ at: Date.now(), scanner: h.scanner, slide: h.slide, kind: 'wrong_way', detail: `tile ${h.tile.index} seq ${h.seq}` });
      for (const a of d.alerts) {
        this.ctx.logger.warn(`controller: ${a.reason}`, { slide: a.slide, detail: a.detail });
        this.record({ at: Date.now(), scanner: a.scanner, slide: a.slide, kind: a.reason, detail: a.detail });
        this.ctx.events.emit('loop:alert', a);
      }
      // the retained status tells what the loop has learned and where it stopped trusting itself
      if (d.alerts.length || before !== dirs(loop.sign_learning)) this.ctx.events.emit('status:changed');
    }
    for (const r of d.refused) {
      // dead band and hysteresis are the controller working as intended; the other limits need a person
      if (r.limit === 'dead_band' || r.limit === 'hysteresis') continue;
      const t = this.refusedLog.take(`${o.header.scanner}/${o.header.slide}/${r.limit}`);
      if (!t) continue;
      this.ctx.logger.warn('controller: action refused by safety limit', { ...r, suppressed: t.suppressed });
      this.ctx.events.emit('action:refused', { ...r, scanner: o.header.scanner, suppressed: t.suppressed });
    }
    for (const a of d.actions) {
      this.ctx.metrics.actions++;
      this.ctx.logger.info(`action ${a.type}${a.dry_run ? ' (dry run)' : ''}`, {
        id: a.id,
        slide: a.slide,
        tile: a.tile.index,
        seq: a.tile.seq,
        z_offset_um: a.z_offset_um,
        reason: a.reason,
      });
      this.ctx.events.emit('action', a);
    }
  }
}
