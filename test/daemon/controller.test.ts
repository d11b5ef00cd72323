import { describe, expect, it } from 'vitest';
import { Store } from '../../adapters/store.js';
import { Controller, FocusController, type Decision, type RuntimeView } from '../../daemon/controller.js';
import { FocusSurface, evaluate } from '../../daemon/focus-surface.js';
import type { Action, ActionRefusal } from '../../core/types.js';
import { makeCtx, outcome, tempDir, type TileSpec } from '../helpers/mqtt-side.js';
import { rng32 } from '../../sim/procedural.js';

// these scripted models read |d| exactly: z_offsets are not damped while the magnitude gain is unknown (that prior
// and the learned gain are tested in test/daemon/loop-learning.test.ts)
const UNDAMPED = { 'controller.learning.zOffsetPriorDamping': 1 };
const base = makeCtx(UNDAMPED).config.controller;
type Settings = typeof base;
const settings = (patch: Partial<{ [K in keyof Settings]: Partial<Settings[K]> | Settings[K] }> = {}): Settings => {
  const s = structuredClone(base) as Record<string, unknown>;
  for (const [k, v] of Object.entries(patch)) s[k] = v && typeof v === 'object' ? { ...(s[k] as object), ...v } : v;
  return s as Settings;
};
const live: RuntimeView = { toleranceUm: 1, dryRun: false };

/** Deterministic noise in [-a, a]. */
const noise = (i: number, a: number) => (((i * 7919) % 101) / 100 - 0.5) * 2 * a;

/**
 * A scripted scanner: tiles on a 10-column raster, true defocus = focal error(t) + stage offsets the scanner applied.
 * z_offset commands take effect `latency` tiles after they are issued; reacquire commands produce a tile with
 * attempt + 1 at the target z right away.
 */
class ScriptedScanner {
  readonly actions: Action[] = [];
  readonly decisions: Decision[] = [];
  private offset = 0;
  private pendingOffsets: { at: number; um: number }[] = [];
  seq = 0;
  constructor(
    private readonly ctl: FocusController,
    private readonly rt: RuntimeView,
    /** true signed defocus of tile i at z offset 0 */
    private readonly focalError: (i: number) => number,
    private readonly opts: { latency?: number; conf?: number; followReacquire?: boolean; now?: () => number; guardUm?: number } = {},
  ) {}

  run(n: number): void {
    for (let i = 0; i < n; i++) this.tile(i);
  }

  private tile(i: number): void {
    for (const p of this.pendingOffsets.filter((p) => p.at <= i)) this.offset += p.um;
    this.pendingOffsets = this.pendingOffsets.filter((p) => p.at > i);
    const z = 100 + this.offset;
    this.feed({ seq: this.seq++, index: i, z, d: this.focalError(i) + this.offset, conf: this.opts.conf ?? 0.95 }, i);
  }

  private feed(t: TileSpec, i: number): void {
    const cal = this.opts.guardUm === undefined ? {} : { calibration: { sign: 'model' as const, fitted: true, guard_um: this.opts.guardUm } };
    const d = this.ctl.onTile(outcome({ ...t, ...cal, tol: this.rt.toleranceUm }), this.opts.now?.() ?? 1_000_000 + this.seq * 200, this.rt);
    this.decisions.push(d);
    for (const a of d.actions) {
      this.actions.push(a);
      if (a.dry_run) continue;
      if (a.type === 'z_offset') this.pendingOffsets.push({ at: i + 1 + (this.opts.latency ?? 2), um: a.z_offset_um });
      if (a.type === 'reacquire' && this.opts.followReacquire !== false) {
        const target = a.target_z_um as number;
        // the re-acquired tile: same position, new z, defocus measured there
        const trueD = this.focalError(i) + (target - 100);
        this.feed({ seq: this.seq++, index: t.index!, attempt: (t.attempt ?? 0) + 1, z: target, d: trueD, conf: t.conf ?? null }, i);
      }
    }
  }

  of(type: Action['type']): Action[] {
    return this.actions.filter((a) => a.type === type);
  }
}

describe('controller decisions (scripted tile streams)', () => {
  it('an isolated out-of-focus tile gets one reacquire of that tile, with the reason', () => {
    const ctl = new FocusController(settings());
    const sc = new ScriptedScanner(ctl, live, (i) => (i === 12 ? 3 : noise(i, 0.3)));
    sc.run(30);
    expect(sc.actions).toHaveLength(1);
    const a = sc.actions[0]!;
    expect(a.type).toBe('reacquire');
    expect(a.tile.index).toBe(12);
    expect(a.z_offset_um).toBeCloseTo(-3, 3);
    expect(a.target_z_um).toBeCloseTo(97, 3);
    expect(a.dry_run).toBe(false);
    expect((a.why as { rule: string }).rule).toBe('isolated');
    expect((a.why as { tiles: { index: number; defocus_um: number }[] }).tiles[0]).toMatchObject({ index: 12, defocus_um: 3 });
    expect(a.reason).toMatch(/defocus 3 µm beyond ±1 µm/);
    expect(Date.parse(a.expires_at) - Date.parse(a.created_at)).toBe(base.actionTtlS * 1000);
  });

  it('a steady drift gets exactly one z_offset and no storm, even with tiles in flight', () => {
    const ctl = new FocusController(settings());
    // focus jumps 2.5 µm at tile 10 and stays there; the correction takes 3 tiles to reach the stage
    const sc = new ScriptedScanner(ctl, live, (i) => (i >= 10 ? 2.5 : 0) + noise(i, 0.2), { latency: 3 });
    sc.run(60);
    const z = sc.of('z_offset');
    expect(z).toHaveLength(1);
    expect(z[0]!.z_offset_um).toBeCloseTo(-2.5, 0);
    expect((z[0]!.why as { rule: string }).rule).toBe('drift');
    expect((z[0]!.why as { tiles: unknown[] }).tiles).toHaveLength(base.drift.consecutive);
    expect(z[0]!.reason).toMatch(/3 consecutive tiles out of focus above focus/);
    // each blurry first acquisition is re-acquired once (the run plus the tiles in flight), nothing else
    const re = sc.of('reacquire');
    expect(re.length).toBeLessThanOrEqual(base.drift.consecutive + 3 + 1);
    expect(new Set(re.map((a) => a.tile.index)).size).toBe(re.length);
    expect(ctl.cumulative('scanner-a', 'slide-1')).toBeCloseTo(z[0]!.z_offset_um, 6);
  });

  it('drift.leadUm: a drift z_offset read well past the tolerance aims past focus the way the drift goes; one read just past it does not', () => {
    const lead = 0.5;
    const ctl = new FocusController(settings({ drift: { ...base.drift, leadUm: lead } }));
    // the focus drifts 0.1 µm per tile from tile 10 on and is 1.8 µm out when the rule first sees it
    const sc = new ScriptedScanner(ctl, live, (i) => (i >= 10 ? 1.8 + 0.1 * (i - 10) : 0) + noise(i, 0.05), { latency: 2 });
    sc.run(16);
    const z = sc.of('z_offset');
    expect(z).toHaveLength(1);
    const mag = (z[0]!.why as { tiles: { defocus_um: number }[] }).tiles.map((t) => t.defocus_um).sort((a, b) => a - b)[1]!;
    expect(z[0]!.z_offset_um).toBeCloseTo(-mag - lead, 6);
    expect(z[0]!.reason).toMatch(/aimed 0.5 µm past focus the way the drift goes/);
    expect(sc.actions.filter((a) => (a.why as { rule: string }).rule === 'revert')).toEqual([]);
    // read 1.3 µm: within tolerance + lead, aimed at focus
    const ctl2 = new FocusController(settings({ drift: { ...base.drift, leadUm: lead } }));
    const sc2 = new ScriptedScanner(ctl2, live, (i) => (i >= 10 ? 1.3 : 0), { latency: 2 });
    sc2.run(16);
    expect(sc2.of('z_offset')[0]!.z_offset_um).toBeCloseTo(-1.3, 6);
    expect(sc2.of('z_offset')[0]!.reason).not.toMatch(/past focus/);
  });

  it('with a calibrated guard band a drift just inside the tolerance re-acquires its tiles but moves no plan, and says why', () => {
    const ctl = new FocusController(settings());
    // focus steps 0.9 µm at tile 10: out of focus under a 0.2 µm guard band (in focus only up to 0.8 µm)
    const sc = new ScriptedScanner(ctl, live, (i) => (i >= 10 ? 0.9 : 0) + noise(i, 0.04), { latency: 2, guardUm: 0.2 });
    sc.run(40);
    expect(sc.of('z_offset')).toHaveLength(0);
    expect(new Set(sc.of('reacquire').map((a) => a.tile.index))).toContain(10);
    const refused = sc.decisions.flatMap((d) => d.refused).filter((r) => r.type === 'z_offset');
    expect(refused.length).toBeGreaterThan(0);
    expect(refused[0]).toMatchObject({ limit: 'hysteresis' });
    expect(refused[0]!.detail).toMatch(/within ±1 µm \(out of focus only by the bundle's guard band\): tiles are re-acquired, the plan is not moved/);
    // beyond the tolerance it is a drift as before
    const ctl2 = new FocusController(settings());
    const sc2 = new ScriptedScanner(ctl2, live, (i) => (i >= 10 ? 1.6 : 0) + noise(i, 0.04), { latency: 2, guardUm: 0.2 });
    sc2.run(40);
    expect(sc2.of('z_offset')).toHaveLength(1);
  });

  it('a slow ramp is corrected step by step, never twice within the cooldown', () => {
    const ctl = new FocusController(settings());
    const sc = new ScriptedScanner(ctl, live, (i) => 0.15 * i, { latency: 1 });
    sc.run(80);
    const zi = sc.decisions.flatMap((d, k) => d.actions.filter((a) => a.type === 'z_offset').map(() => k));
    expect(zi.length).toBeGreaterThanOrEqual(2);
    const zs = sc.of('z_offset');
    for (const a of zs) expect(a.z_offset_um).toBeLessThan(0);
    // consecutive z_offsets are at least cooldownTiles first acquisitions apart
    const firstSeqs = zs.map((a) => a.tile.index);
    for (let k = 1; k < firstSeqs.length; k++) expect(firstSeqs[k]! - firstSeqs[k - 1]!).toBeGreaterThanOrEqual(base.drift.cooldownTiles);
    expect(Math.abs(ctl.cumulative('scanner-a', 'slide-1'))).toBeLessThanOrEqual(base.limits.maxCumulativeUm);
  });

  it('does not chatter: alternating signs and a small overshoot back across the tolerance give no z_offset', () => {
    const ctl = new FocusController(settings());
    const alt = new ScriptedScanner(ctl, live, (i) => (i % 2 ? 1.3 : -1.3));
    alt.run(40);
    expect(alt.of('z_offset')).toHaveLength(0);

    const ctl2 = new FocusController(settings());
    // +2.5 step, corrected by -2.5 (latency 1); then the focus comes back by 1.2 µm: |d| = 1.2 < tol + hysteresis
    const sc = new ScriptedScanner(ctl2, live, (i) => (i >= 5 ? 2.5 : 0) + (i >= 20 ? -1.2 : 0), { latency: 1 });
    sc.run(40);
    const z = sc.of('z_offset');
    expect(z).toHaveLength(1);
    expect(sc.decisions.flatMap((d) => d.refused).some((r) => r.limit === 'hysteresis')).toBe(true);
  });

  it('finds the sign by a probe when the model is unsure (stage below focus: the probe is in focus)', () => {
    const ctl = new FocusController(settings());
    const first = ctl.onTile(outcome({ seq: 0, index: 4, z: 100, d: -2, conf: 0.6 }), 1_000, live);
    expect(first.actions).toHaveLength(1);
    const probe = first.actions[0]!;
    expect(probe).toMatchObject({ type: 'reacquire', probe: true, z_offset_um: 2, target_z_um: 102 });
    expect((probe.why as { rule: string }).rule).toBe('probe');
    // truth: the stage was 2 µm below focus, so at z + 2 the tile is sharp
    const back = ctl.onTile(outcome({ seq: 1, index: 4, attempt: 1, z: 102, d: 0.1, conf: 0.55 }), 2_000, live);
    expect(back.actions).toHaveLength(0);
  });

  it('finds the sign by a probe (stage above focus: the probe is worse, re-acquire at z − |d|)', () => {
    const ctl = new FocusController(settings());
    const first = ctl.onTile(outcome({ seq: 0, index: 4, z: 100, d: -2, conf: 0.6 }), 1_000, live);
    expect(first.actions[0]!.target_z_um).toBe(102);
    const back = ctl.onTile(outcome({ seq: 1, index: 4, attempt: 1, z: 102, d: 4, conf: 0.6 }), 2_000, live);
    expect(back.actions).toHaveLength(1);
    expect(back.actions[0]).toMatchObject({ type: 'reacquire', probe: false, target_z_um: 98, z_offset_um: -4 });
    expect((back.actions[0]!.why as { rule: string }).rule).toBe('probe_result');
    expect(back.actions[0]!.reason).toMatch(/stage was above focus/);
  });

  it('a drift seen only through probes still gives a z_offset with the probed sign', () => {
    const ctl = new FocusController(settings());
    // true defocus −2 from tile 5 on; the model only knows |d| (confidence 0.55)
    const sc = new ScriptedScanner(ctl, live, (i) => (i >= 5 ? -2 : 0), { conf: 0.55, latency: 2 });
    sc.run(30);
    const z = sc.of('z_offset');
    expect(z).toHaveLength(1);
    expect(z[0]!.z_offset_um).toBeCloseTo(2, 3);
    expect(sc.of('reacquire').filter((a) => a.probe).length).toBeGreaterThanOrEqual(3);
  });

  it('clamps a large correction to maxStepUm and says so', () => {
    const ctl = new FocusController(settings({ limits: { maxStepUm: 2 } }));
    const sc = new ScriptedScanner(ctl, live, (i) => (i >= 3 ? 6 : 0), { latency: 1 });
    sc.run(6);
    const z = sc.of('z_offset');
    expect(z).toHaveLength(1);
    expect(z[0]!.z_offset_um).toBe(-2);
    expect((z[0]!.why as { clamped: boolean }).clamped).toBe(true);
  });

  it('never corrects more than maxCumulativeUm per slide; further corrections are refused', () => {
    // the z_offsets are not judged here (evalTiles beyond the run): the tilt rule's extrapolation on this raster
    // gets one of them wrong, which the stop-loss would rightly take back (tested below)
    const ctl = new FocusController(settings({ limits: { maxCumulativeUm: 5, maxStepUm: 2 }, learning: { evalTiles: 1000 } }));
    // the focus runs away 0.5 µm per tile: corrections pile up to the limit
    const sc = new ScriptedScanner(ctl, live, (i) => 0.5 * i, { latency: 0 });
    sc.run(120);
    const total = sc.of('z_offset').reduce((s, a) => s + a.z_offset_um, 0);
    expect(Math.abs(total)).toBeLessThanOrEqual(5 + 1e-9);
    expect(Math.abs(total)).toBeGreaterThan(4);
    expect(sc.decisions.flatMap((d) => d.refused).some((r) => r.limit === 'max_cumulative')).toBe(true);
  });

  it('re-acquires one tile at most maxReacquirePerTile times', () => {
    const ctl = new FocusController(settings({ limits: { maxReacquirePerTile: 2 } }));
    // tile 3 is blurred wherever it is acquired (e.g. a bubble)
    let seq = 0;
    let d = ctl.onTile(outcome({ seq: seq++, index: 3, d: 3 }), 1000, live);
    let count = d.actions.length;
    for (let attempt = 1; attempt <= 5; attempt++) {
      d = ctl.onTile(outcome({ seq: seq++, index: 3, attempt, d: 3, z: 97 }), 1000 + attempt, live);
      count += d.actions.length;
      if (attempt >= 2) expect(d.refused[0]?.limit).toBe('max_reacquire_per_tile');
    }
    expect(count).toBe(2);
  });

  it('limits actions per slide per minute', () => {
    const ctl = new FocusController(settings({ limits: { maxActionsPerMinute: 5 } }));
    let n = 0;
    let refused = 0;
    // isolated blurry tiles (between sharp ones), 20 within 20 s
    for (let i = 0; i < 40; i++) {
      const d = ctl.onTile(outcome({ seq: i, index: i, d: i % 2 ? 3 * (i % 4 === 1 ? 1 : -1) : 0 }), 1_000 + i * 500, live);
      n += d.actions.length;
      refused += d.refused.filter((r) => r.limit === 'rate_limit').length;
    }
    expect(n).toBe(5);
    expect(refused).toBe(15);
    // a minute later the budget is back
    const later = ctl.onTile(outcome({ seq: 100, index: 100, d: 3 }), 1_000 + 40 * 500 + 61_000, live);
    expect(later.actions).toHaveLength(1);
  });

  it('applies the dead band', () => {
    const ctl = new FocusController(settings({ limits: { deadBandUm: 0.5 } }));
    const rt = { toleranceUm: 0.2, dryRun: false };
    const sc = new ScriptedScanner(ctl, rt, (i) => (i >= 2 ? 0.4 : 0), { latency: 1 });
    sc.run(10);
    expect(sc.of('z_offset')).toHaveLength(0);
    expect(sc.decisions.flatMap((d) => d.refused).some((r) => r.limit === 'dead_band')).toBe(true);
  });

  it('dry run: marks every action dry_run, the scanner does not act, limits are not consumed', () => {
    const ctl = new FocusController(settings({ limits: { maxReacquirePerTile: 1 } }));
    const dry = { toleranceUm: 1, dryRun: true };
    const sc = new ScriptedScanner(ctl, dry, (i) => (i >= 10 ? 2.5 : 0), { latency: 1 });
    sc.run(30);
    expect(sc.actions.length).toBeGreaterThan(0);
    expect(sc.actions.every((a) => a.dry_run)).toBe(true);
    // the focus was never corrected (the scanner ignores dry-run commands) and nothing was counted
    expect(ctl.cumulative('scanner-a', 'slide-1')).toBe(0);
    // shadow mode still never chatters: z_offsets are cooldown tiles apart
    const zi = sc.of('z_offset').map((a) => a.tile.index);
    for (let k = 1; k < zi.length; k++) expect(zi[k]! - zi[k - 1]!).toBeGreaterThanOrEqual(base.drift.cooldownTiles);
    // same tile decided live afterwards: the per-tile limit was not consumed by the dry run
    const liveD = ctl.onTile(outcome({ seq: 1000, index: 12, d: 3 }), 5_000_000, live);
    expect(liveD.actions.some((a) => a.type === 'reacquire' && !a.dry_run)).toBe(true);
  });

  it('command ids are idempotent: the same tile gives the same id, a duplicate tile no second command', () => {
    const a = new FocusController(settings()).onTile(outcome({ seq: 7, index: 7, d: 3 }), 1_000, live).actions[0]!;
    const ctl = new FocusController(settings());
    const b = ctl.onTile(outcome({ seq: 7, index: 7, d: 3 }), 9_000, live).actions[0]!;
    expect(b.id).toBe(a.id);
    expect(ctl.onTile(outcome({ seq: 7, index: 7, d: 3 }), 9_001, live).actions).toHaveLength(0);
    const other = ctl.onTile(outcome({ seq: 8, index: 8, d: 3 }), 9_002, live).actions[0]!;
    expect(other.id).not.toBe(a.id);
  });
});

describe('focus surface', () => {
  it('recovers a known tilt and curvature, robust to outliers', () => {
    const s = new FocusSurface({ minPointsPlane: 4, minPointsQuadratic: 12, maxPoints: 400 });
    const truth = (x: number, y: number) => 50 + 0.002 * x - 0.001 * y + 2e-7 * (x - 2000) ** 2;
    let k = 0;
    for (let r = 0; r < 8; r++)
      for (let c = 0; c < 8; c++) {
        const x = c * 600;
        const y = r * 600;
        // every 10th point is a wrong-sign score: 4 µm off
        s.add(x, y, truth(x, y) + noise(k, 0.05) + (k % 10 === 3 ? 4 : 0));
        k++;
      }
    const f = s.fit()!;
    expect(f.model).toBe('quadratic');
    expect(f.outliers).toBeGreaterThanOrEqual(6);
    for (const [x, y] of [[100, 100], [2500, 3000], [4000, 4000]] as const) expect(evaluate(f, x, y)).toBeCloseTo(truth(x, y), 1);
    const p = s.predict(1234, 2222, 52)!;
    expect(p.defocus_um).toBeCloseTo(52 - truth(1234, 2222), 1);
  });

  it('fits a plane with few points and gives the tilt in µm/mm; one row of tiles still fits', () => {
    const s = new FocusSurface({ minPointsPlane: 4, minPointsQuadratic: 12, maxPoints: 400 });
    expect(s.fit()).toBeNull();
    for (const [x, y] of [[0, 0], [1000, 0], [0, 1000], [1000, 1000], [500, 500]] as const) s.add(x, y, 10 + 0.003 * x + 0.001 * y);
    const f = s.fit()!;
    expect(f.model).toBe('plane');
    expect(f.tilt_um_per_mm.x).toBeCloseTo(3, 3);
    expect(f.tilt_um_per_mm.y).toBeCloseTo(1, 3);
    const row = new FocusSurface({ minPointsPlane: 4, minPointsQuadratic: 12, maxPoints: 400 });
    for (let c = 0; c < 15; c++) row.add(c * 500, 0, 10 + 0.002 * c * 500);
    expect(row.predict(8000, 0, 30)!.best_focus_z_um).toBeCloseTo(26, 1);
  });

  it('the controller predicts each tile from the surface and calls a predictable offset tilt, not drift', () => {
    const ctl = new FocusController(settings());
    // the slide is tilted 2 µm/mm in x; the scanner keeps z at 100: defocus grows along each row
    const bestZ = (x: number) => 100 - 0.002 * x + 0.0004 * 500;
    const preds: (number | null)[] = [];
    const actions: Action[] = [];
    let seq = 0;
    for (let i = 0; i < 40; i++) {
      const x = (i % 10) * 500;
      const y = Math.floor(i / 10) * 500;
      const o = outcome({ seq: seq++, index: i, x, y, z: 100, d: 100 - bestZ(x) });
      const d = ctl.onTile(o, 1_000 + i, live);
      preds.push(ctl.predict(o.header)?.defocus_um ?? null);
      actions.push(...d.actions);
    }
    // after the first row the prediction matches the measured defocus
    for (let i = 12; i < 40; i++) expect(preds[i]).toBeCloseTo(100 - bestZ((i % 10) * 500), 1);
    const z = actions.filter((a) => a.type === 'z_offset');
    expect(z.length).toBeGreaterThan(0);
    expect(z.some((a) => (a.why as { rule: string }).rule === 'tilt')).toBe(true);
    expect(z.every((a) => a.predicted !== null)).toBe(true);
  });
});

describe('focus surface from in-focus tiles of unknown sign', () => {
  it('a flat slide read ±0.8 µm with random signs it is not sure of: the surface stays at the stage z, no tilt z_offset', () => {
    const ctl = new FocusController(settings());
    const coin = rng32(5);
    const actions: Action[] = [];
    const preds: number[] = [];
    for (let i = 0; i < 40; i++) {
      // truth: in focus everywhere; the model reads 0.6-0.9 µm with a sign that is a coin (and says so: 0.6)
      const o = outcome({ seq: i, index: i, z: 100, d: (coin() < 0.5 ? -1 : 1) * (0.6 + 0.3 * coin()), conf: 0.6 });
      const p = ctl.predict(o.header);
      if (i >= 12 && p) preds.push(p.defocus_um);
      actions.push(...ctl.onTile(o, 1_000 + i, live).actions);
    }
    // the old surface took z ∓ |d| from such tiles: tilted by chance, it sent tilt z_offsets to a flat slide
    expect(preds.length).toBeGreaterThan(20);
    for (const p of preds) expect(Math.abs(p)).toBeLessThan(0.05);
    expect(actions.filter((a) => a.type === 'z_offset')).toHaveLength(0);
  });
});

describe('Controller component', () => {
  it("turns 'tile:scored' events into 'action' events; dry run from ctx.runtime marks them", async () => {
    const ctx = makeCtx();
    const c = new Controller(ctx);
    const got: Action[] = [];
    ctx.events.on('action', (a) => got.push(a));
    await c.start(new AbortController().signal);
    ctx.events.emit('tile:scored', outcome({ seq: 0, index: 0, d: 0.1 }));
    ctx.events.emit('tile:scored', outcome({ seq: 1, index: 1, d: -2.5 }));
    expect(got).toHaveLength(1);
    expect(got[0]).toMatchObject({ type: 'reacquire', dry_run: false, z_offset_um: 2.5 });
    ctx.runtime.dryRun = true;
    ctx.events.emit('tile:scored', outcome({ seq: 2, index: 2, d: 3 }));
    expect(got[1]).toMatchObject({ type: 'reacquire', dry_run: true });
    expect(ctx.metrics.actions).toBe(2);
    expect(c.predict(outcome({ seq: 3, index: 3, d: 0 }).header)).toBeNull();
    await c.stop();
    ctx.events.emit('tile:scored', outcome({ seq: 4, index: 4, d: 3 }));
    expect(got).toHaveLength(2);
  });
});

describe('Controller across a restart', () => {
  it('a restarted daemon keeps the cumulative correction and per-tile re-acquisitions of a slide (from the store)', async () => {
    const overrides = { ...UNDAMPED, 'store.dir': tempDir(), 'controller.limits.maxCumulativeUm': 3, 'controller.limits.maxStepUm': 3 };
    const drift = (ctx: ReturnType<typeof makeCtx>, slide: string, from: number) => {
      for (let i = 0; i < 4; i++) ctx.events.emit('tile:scored', outcome({ slide, seq: from + i, index: from + i, d: 3 }));
    };
    const run = async (fn: (ctx: ReturnType<typeof makeCtx>) => void) => {
      const ctx = makeCtx(overrides);
      const store = new Store(ctx);
      const c = new Controller(ctx, { store });
      const got: Action[] = [];
      const refused: ActionRefusal[] = [];
      // what the outbox does first with every action: write it to the store
      ctx.events.on('action', (a) => (got.push(a), store.outboxPut(a)));
      ctx.events.on('action:refused', (r) => refused.push(r));
      await store.start(new AbortController().signal);
      await c.start(new AbortController().signal);
      fn(ctx);
      await c.stop();
      await store.stop();
      return { got, refused, logs: ctx.logLines() };
    };
    const first = await run((ctx) => drift(ctx, 'S-1', 0));
    expect(first.got.filter((a) => a.type === 'z_offset').map((a) => a.z_offset_um)).toEqual([-3]);
    const second = await run((ctx) => {
      drift(ctx, 'S-1', 100);
      // tile 0 was re-acquired once before the restart: with the limit of 2 it gets one more, not two
      ctx.events.emit('tile:scored', outcome({ slide: 'S-1', seq: 200, index: 0, attempt: 1, d: 3 }));
      ctx.events.emit('tile:scored', outcome({ slide: 'S-1', seq: 201, index: 0, attempt: 2, d: 3 }));
      drift(ctx, 'S-2', 0);
    });
    expect(second.got.filter((a) => a.type === 'z_offset' && a.slide === 'S-1')).toHaveLength(0);
    expect(second.logs.some((l) => l.includes('max_cumulative'))).toBe(true);
    // the refusal is an event too (published on the error topic as action_refused), once per slide and limit
    expect(second.refused.filter((r) => r.limit === 'max_cumulative' && r.slide === 'S-1')).toHaveLength(1);
    expect(second.got.filter((a) => a.slide === 'S-1' && a.tile.index === 0)).toHaveLength(1);
    expect(second.got.filter((a) => a.type === 'z_offset' && a.slide === 'S-2').map((a) => a.z_offset_um)).toEqual([-3]);
  });
});
