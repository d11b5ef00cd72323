import { createHash } from 'node:crypto';
import type { FocusdConfig } from '../config/load.js';
import type { Context } from '../core/context.js';
import { FocusSurface } from './focus-surface.js';
import { median } from '../core/stats.js';
import type { Component } from '../core/lifecycle.js';
import { LogThrottle } from '../core/log-throttle.js';
import type { Action, ActionType, SurfacePrediction, TileHeader, TileOutcome } from '../core/types.js';

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

export type Rule = 'isolated' | 'probe' | 'probe_result' | 'retry' | 'drift' | 'tilt';

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
}

interface Probe {
  seq: number;
  attempt: number;
  z0: number;
  absD0: number;
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
}

/** Slides remembered per controller; older ones are forgotten (a scanner works on one slide at a time). */
const MAX_SLIDES = 32;
/** Duplicate detection and prediction cache per slide, most recent entries. */
const MAX_SEEN = 4096;

const r3 = (v: number) => Math.round(v * 1000) / 1000;

/** Limits already spent on a slide before this process started (from the action history). */
export type SlideHistory = (scanner: string, slide: string) => { cumulativeUm: number; reacquires: Map<number, number> };

export class FocusController {
  private readonly slides = new Map<string, SlideState>();

  constructor(private readonly s: ControllerSettings, private readonly history?: SlideHistory) {}

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
    const out: Decision = { actions: [], refused: [], prediction: null };
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
    const d = o.score.defocus_um;
    if (o.verdict === 'no_tissue' || d === null) return out;

    const conf = o.score.sign_confidence;
    const signKnown = conf !== null && conf >= this.s.signConfidence;
    const oof = o.verdict === 'out_of_focus';
    const absD = Math.abs(d);
    const { x, y, z } = h.stage_um;
    const ctx: DecideCtx = { o, st, now, rt, out, pred };

    if (h.attempt > 0) {
      const probe = st.probes.get(h.tile.index);
      if (probe && h.attempt > probe.attempt) {
        st.probes.delete(h.tile.index);
        // the probe went up by |d0|: if that made it better the stage was below focus (d0 < 0), else above
        const sign0: 1 | -1 = absD < probe.absD0 ? -1 : 1;
        const d0 = sign0 * probe.absD0;
        const target = probe.z0 - d0;
        st.surface.add(x, y, target);
        const rec = st.window.find((r) => r.seq === probe.seq);
        if (rec) {
          rec.d = d0;
          rec.sign = sign0;
        }
        if (oof) {
          this.reacquire(ctx, target, 'probe_result', false,
            `probe at z ${r3(probe.z0)} + ${r3(probe.absD0)} µm scored ${r3(absD)} µm vs ${r3(probe.absD0)} µm before: stage was ${sign0 < 0 ? 'below' : 'above'} focus, re-acquire at best focus ${r3(target)} µm`);
        }
        this.checkDrift(ctx);
        return out;
      }
      if (signKnown || !oof) st.surface.add(x, y, z - d);
      if (oof) this.reacquireOof(ctx, signKnown, 'retry');
      return out;
    }

    st.tilesSinceZ++;
    if (signKnown || !oof) st.surface.add(x, y, z - d);
    const sign: 1 | -1 | 0 = oof && signKnown ? (d > 0 ? 1 : -1) : 0;
    st.window.push({ seq: h.seq, index: h.tile.index, attempt: h.attempt, d: sign ? d : absD, sign, oof, conf, z, pred });
    while (st.window.length > Math.max(this.s.drift.window, this.s.drift.consecutive)) st.window.shift();
    if (!oof) return out;
    // every blurry tile has to be replaced: re-acquire it (a probe when the sign is unsure) ...
    this.reacquireOof(ctx, signKnown, 'isolated');
    // ... and when the blur is systematic, also move the focus for the tiles to come
    this.checkDrift(ctx);
    return out;
  }

  private reacquireOof(c: DecideCtx, signKnown: boolean, rule: 'isolated' | 'retry'): void {
    const h = c.o.header;
    const d = c.o.score.defocus_um!;
    const conf = c.o.score.sign_confidence;
    if (signKnown) {
      this.reacquire(c, h.stage_um.z - d, rule, false,
        `defocus ${r3(d)} µm beyond ±${c.rt.toleranceUm} µm (sign confidence ${conf}); re-acquire at best focus`);
    } else {
      const absD = Math.abs(d);
      const ok = this.reacquire(c, h.stage_um.z + absD, 'probe', true,
        `|defocus| ${r3(absD)} µm beyond ±${c.rt.toleranceUm} µm with sign confidence ${conf} < ${this.s.signConfidence}: probe at z + |d| to learn the sign`);
      if (ok) c.st.probes.set(h.tile.index, { seq: h.seq, attempt: h.attempt, z0: h.stage_um.z, absD0: absD });
    }
  }

  private reacquire(c: DecideCtx, targetZ: number, rule: Rule, probe: boolean, detail: string): boolean {
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
    if (st.lastZSign !== 0 && st.tilesSinceZ < cooldownTiles) return;
    const known = st.window.filter((r) => r.oof && r.sign !== 0);
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
    if (!run) return;
    const sgn = run[0]!.sign as 1 | -1;
    const mag = median(run.map((r) => Math.abs(r.d)));
    // tilt: the surface fitted before the run began already predicted its first tile's defocus, so the focal
    // plane did not move, the scanner just does not follow it. Later run tiles cannot judge this: the surface
    // already contains the run (and in a raster scan a new row looks like a tilt in y).
    const first = run[0]!;
    const explained = first.pred !== null && Math.abs(first.d - first.pred.defocus_um) <= tol / 2;
    const rule: Rule = explained ? 'tilt' : 'drift';
    let correction = -sgn * mag;
    if (rule === 'tilt' && c.pred) correction = -c.pred.defocus_um;
    const needed = st.lastZSign !== 0 && Math.sign(correction) !== st.lastZSign ? tol + hysteresisUm : tol;
    const tiles = run.map((r) => ({ seq: r.seq, index: r.index, attempt: r.attempt, defocus_um: r3(r.d), sign_confidence: r.conf, stage_z_um: r.z }));
    if (mag <= needed) {
      this.refuse(c, 'z_offset', 'hysteresis', `median |defocus| ${r3(mag)} µm ≤ ${r3(needed)} µm needed to reverse the previous correction`);
      return;
    }
    let clamped = false;
    if (Math.abs(correction) > this.s.limits.maxStepUm) {
      correction = Math.sign(correction) * this.s.limits.maxStepUm;
      clamped = true;
    }
    if (!c.rt.dryRun) {
      const room = this.s.limits.maxCumulativeUm - Math.abs(st.cumulativeUm + correction);
      if (room < 0) {
        const allowed = Math.sign(correction) * (this.s.limits.maxCumulativeUm - Math.abs(st.cumulativeUm)) ;
        if (Math.sign(allowed) !== Math.sign(correction) || Math.abs(allowed) < this.s.limits.deadBandUm) {
          this.refuse(c, 'z_offset', 'max_cumulative', `slide already corrected by ${r3(st.cumulativeUm)} µm; limit ±${this.s.limits.maxCumulativeUm} µm`);
          return;
        }
        correction = allowed;
        clamped = true;
      }
    }
    if (Math.abs(correction) < this.s.limits.deadBandUm) {
      this.refuse(c, 'z_offset', 'dead_band', `correction ${r3(correction)} µm inside the dead band ±${this.s.limits.deadBandUm} µm`);
      return;
    }
    if (!c.rt.dryRun && !this.rateOk(c, 'z_offset')) return;
    if (!c.rt.dryRun) st.cumulativeUm = r3(st.cumulativeUm + correction);
    st.lastZSign = correction > 0 ? 1 : -1;
    st.tilesSinceZ = 0;
    // only tiles taken after the correction may count for the next one
    st.window = [];
    const detail =
      `${how}, median |defocus| ${r3(mag)} µm > ±${tol} µm` +
      (rule === 'tilt' ? `; the focus surface (${c.pred?.model}) predicted it: slide tilt, correct to the surface` : '; the focus surface did not predict it: focus drift') +
      (clamped ? `; clamped to ${r3(correction)} µm by the limits` : '');
    c.out.actions.push(
      this.action(c, 'z_offset', r3(correction), rule, detail, tiles, { stage_um: { ...c.o.header.stage_um } }, {
        cumulative_um: st.cumulativeUm,
        clamped,
      }),
    );
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
  /** the store (adapters/store.ts): limits already spent on a slide survive a restart. */
  store?: { slideLimits: SlideHistory };
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
    this.logic = new FocusController(this.ctx.config.controller, store ? (scanner, slide) => store.slideLimits(scanner, slide) : undefined);
    this.off = this.ctx.events.on('tile:scored', (o) => this.handle(o));
  }

  async stop(): Promise<void> {
    this.off?.();
    this.off = null;
  }

  /** For the MQTT tile message: the focus-surface prediction of this tile (before it was scored). */
  predict(h: TileHeader): SurfacePrediction | null {
    return this.logic?.predict(h) ?? null;
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
