// The closed-loop virtual scanner (sim/): its optics and focus surface, then against the real daemon (in-process,
// real ZeroMQ, the real Mosquitto of MOSQUITTO_URL): actions ignored, actions obeyed, and wrong-way moves counted.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import mqtt from 'mqtt';
import { describe, expect, it } from 'vitest';
import { inProcessDaemons } from '../../cli/simulate.js';
import { DefocusOptics } from '../../imaging/optics.js';
import { instrument, instrumentOptics } from '../../sim/instruments.js';
import { synthTile } from '../../sim/procedural.js';
import { runSimulation, slideSeed, type DaemonFactory } from '../../sim/run.js';
import { isTissueKind, VirtualSlide } from '../../sim/slide.js';
import type { TileVerdict } from '../../sim/feed.js';
import { MOSQUITTO_URL, uniqueId } from '../helpers/net.js';

const tile = (optics: DefocusOptics, z: number) => synthTile({ width: 96, height: 64, seed: 7, kind: 'tissue', defocusUm: z, pixelSizeUm: 0.22 }, optics).rgb;

describe('instruments', () => {
  it('the mirrored instrument renders +z exactly as the training optics render −z, and the sign-less one cannot tell ±z apart', () => {
    const matching = instrumentOptics('matching');
    const mirrored = instrumentOptics('mirrored');
    const none = instrumentOptics('none');
    expect(tile(mirrored, 2).equals(tile(matching, -2))).toBe(true);
    expect(tile(mirrored, -1.5).equals(tile(matching, 1.5))).toBe(true);
    // the asymmetry is real: the training optics blur +2 and −2 differently
    expect(tile(matching, 2).equals(tile(matching, -2))).toBe(false);
    expect(tile(none, 2).equals(tile(none, -2))).toBe(true);
    // one asymmetry reversed is neither the training optics nor their mirror image
    const sa = instrumentOptics('sa-reversed');
    expect(tile(sa, 2).equals(tile(matching, 2))).toBe(false);
    expect(tile(sa, 2).equals(tile(matching, -2))).toBe(false);
    expect(instrument('colour-reversed').optics.chromaticShiftUm).toEqual(instrument('matching').optics.chromaticShiftUm.map((v) => -v));
  });
});

describe('virtual slide', () => {
  it('is drawn from its seed: tilt, curvature, a drift that starts partway, isolated bumps on tissue that stay', () => {
    const a = new VirtualSlide({ seed: 42 });
    const b = new VirtualSlide({ seed: 42 });
    expect(b.surface).toEqual(a.surface);
    expect(b.tiles).toEqual(a.tiles);
    expect(new VirtualSlide({ seed: 43 }).surface).not.toEqual(a.surface);
    const s = a.surface;
    const n = a.tiles.length;
    expect(Math.abs(s.tiltUmPerMm.x)).toBeGreaterThan(1);
    expect(Math.abs(s.curvatureUm)).toBeGreaterThanOrEqual(0.5);
    expect(s.drift.startAcquisition).toBeGreaterThan(n / 4);
    expect(s.drift.startAcquisition).toBeLessThan(n * 0.6);
    const t0 = a.tiles[0]!;
    // no drift before it starts; after it, the focus moves with every acquisition, the plan stays flat
    expect(a.smoothFocus(t0.x, t0.y, s.drift.startAcquisition)).toBe(a.smoothFocus(t0.x, t0.y, 0));
    const later = a.smoothFocus(t0.x, t0.y, n) - a.smoothFocus(t0.x, t0.y, 0);
    expect(later).toBeCloseTo(s.drift.atEndOfFirstPassUm, 2);
    expect(Math.abs(later)).toBeGreaterThanOrEqual(2);
    expect(a.plannedZ(a.tiles[5]!)).toBe(a.plannedZ(t0));
    // the tilt: opposite corners of the first row differ by about tilt × width
    const last = a.tiles[a.cols - 1]!;
    const dx = (last.x - t0.x) / 1000;
    const dz = a.smoothFocus(last.x, last.y, 0) - a.smoothFocus(t0.x, t0.y, 0);
    expect(dz).toBeCloseTo(s.tiltUmPerMm.x * dx, 6);
    // three isolated bumps of 2.5-3.5 µm on tissue tiles; a retake (later t) sees the same bump
    expect(s.bumps).toHaveLength(3);
    for (const bump of s.bumps) {
      const t = a.tiles[bump.index]!;
      expect(isTissueKind(t.kind)).toBe(true);
      expect(Math.abs(bump.um)).toBeGreaterThanOrEqual(2.5);
      expect(Math.abs(bump.um)).toBeLessThanOrEqual(3.5);
      expect(a.trueFocus(t, 3) - a.smoothFocus(t.x, t.y, 3)).toBeCloseTo(bump.um, 9);
      expect(a.trueFocus(t, n + 5) - a.smoothFocus(t.x, t.y, n + 5)).toBeCloseTo(bump.um, 9);
    }
    expect(a.tiles.filter((t) => t.bumpUm !== 0)).toHaveLength(3);
  });
});

// small slides: every acquisition is rendered (a few hundred ms on a busy core) and scored by the real model
const GRID = { cols: 5, rows: 4, width: 640, height: 320 };
const SMALL = { cols: 4, rows: 3, width: 640, height: 320 };

function daemons(pattern: 'router' | 'pull', overrides: Record<string, unknown> = {}): { factory: DaemonFactory; scanner: string } {
  const scanner = uniqueId('sim');
  return {
    scanner,
    factory: inProcessDaemons({
      load: { file: null, args: [], env: {}, overrides: { 'scanner.id': scanner, 'mqtt.url': MOSQUITTO_URL, 'log.level': 'error', ...overrides } },
      pattern,
    }),
  };
}

describe('closed loop against the real daemon', () => {
  it('router: with actions ignored every tile ends at its planned defocus; on the matching instrument the loop does not do worse', async () => {
    const seed = 3;
    const { factory } = daemons('router');
    const r = await runSimulation({ instrument: 'matching', slides: 1, seed, ...SMALL, daemon: factory });
    const slide = new VirtualSlide({ seed: slideSeed(seed, 0), ...SMALL });
    const off = r.without_feedback!.slides[0]!;
    // the daemon did ask for corrections, and the scanner did not execute one
    expect(off.actions).toBeGreaterThan(0);
    expect(off.ignored_actions).toBe(off.actions);
    expect(off.acquisitions).toBe(slide.tiles.length);
    expect(off.lost_verdicts + off.rejected).toBe(0);
    for (const [i, d] of off.tiles_detail.entries()) {
      const t = slide.tiles[i]!;
      expect(d.acquisitions).toBe(1);
      expect(d.planned_z_um).toBe(slide.plannedZ(t));
      // tile i is the i-th acquisition: the drift clock reads i
      expect(d.final_defocus_um).toBeCloseTo(slide.plannedZ(t) - slide.trueFocus(t, i), 3);
      expect(d.final_defocus_um).toBe(d.first_defocus_um);
    }
    const on = r.with_feedback!.slides[0]!;
    expect(on.actions).toBeGreaterThan(0);
    expect(on.ignored_actions).toBe(0);
    expect(on.acquisitions).toBeGreaterThan(slide.tiles.length);
    expect(on.tissue_tiles).toBe(off.tissue_tiles);
    expect(on.yield).toBeGreaterThanOrEqual(off.yield);
  });

  it('pull: counts a scripted wrong-way re-acquisition and (tilted) z_offset as wrong-way, a right one and a probe not', async () => {
    const seed = 5;
    // the daemon's own commands are shadow (dry run): the scanner must not execute them; a script commands instead
    const { factory, scanner } = daemons('pull', { 'controller.dryRun': true });
    const slide = new VirtualSlide({ seed: slideSeed(seed, 0), ...GRID });
    const base = `focusd/${scanner}`;
    const script = await mqtt.connectAsync(MOSQUITTO_URL, { clientId: uniqueId('script'), protocolVersion: 4 });
    const tissue = slide.tiles.filter((t) => isTissueKind(t.kind) && t.bumpUm === 0 && t.index > 0 && t.index < slide.tiles.length - 2);
    const [wrong1, right, probe, wrong2, zoff] = tissue;
    expect(zoff).toBeDefined();
    let clock = 0;
    let n = 0;
    const publish = (v: TileVerdict, type: 'reacquire' | 'z_offset', zOffset: number, extra: Record<string, unknown>) =>
      script.publishAsync(
        `${base}/action`,
        JSON.stringify({
          schema: 'focusd/action/1', id: `script-${n++}`, type, z_offset_um: zOffset, scanner, slide: v.slide, scan: v.scan,
          tile: { index: (v as unknown as { tile: { index: number } }).tile.index, row: 0, col: 0, seq: v.seq, attempt: v.attempt },
          reason: 'scripted', why: { rule: 'scripted' }, dry_run: false, created_at: new Date().toISOString(), expires_at: new Date(Date.now() + 60_000).toISOString(),
          ...extra,
        }),
        { qos: 1 },
      );
    script.on('message', (_topic, payload) => {
      const v = JSON.parse(payload.toString()) as TileVerdict & { tile: { index: number }; stage_um: { z: number } };
      if (v.scanner !== scanner || !v.slide.endsWith('-fb')) return;
      const t = clock++; // the scanner's drift clock: acquisitions of the slide before this one
      if (v.attempt !== 0) return;
      const tileNow = slide.tiles[v.tile.index]!;
      const z = v.stage_um.z;
      const d = z - slide.trueFocus(tileNow, t);
      const away = d >= 0 ? 1 : -1;
      if (tileNow === wrong1 || tileNow === wrong2) void publish(v, 'reacquire', away * 3, { target_z_um: z + away * 3, probe: false });
      else if (tileNow === right) void publish(v, 'reacquire', -d, { target_z_um: z - d, probe: false });
      else if (tileNow === probe) void publish(v, 'reacquire', away * 3, { target_z_um: z + away * 3, probe: true });
      else if (tileNow === zoff) {
        const e = z - slide.smoothFocus(tileNow.x, tileNow.y, t);
        // tilted: 1.5 µm/mm along x about this tile (docs/mqtt.md `plane`)
        void publish(v, 'z_offset', (e >= 0 ? 1 : -1) * 2.5, { plane: { origin_um: { x: tileNow.x, y: tileNow.y }, dz_dx_um_per_mm: 1.5, dz_dy_um_per_mm: 0 } });
      }
    });
    await script.subscribeAsync(`${base}/tile`, { qos: 0 });
    try {
      const r = await runSimulation({
        instrument: 'matching', slides: 1, seed, ...GRID, daemon: factory, runs: ['feedback'],
        // scripted commands follow every verdict, not only out-of-focus ones: wait for them after each tile
        // (1 s: under a loaded CI machine a 400 ms wait once let one command arrive late)
        timings: { quietWaitMs: 1000, actionWaitMs: 1000 },
      });
      const s = r.with_feedback!.slides[0]!;
      // the daemon's shadow commands arrived and were not executed
      expect(s.dry_run_actions).toBeGreaterThan(0);
      expect(s.actions).toBe(5);
      expect(s.late_actions).toBe(0);
      expect(s.reacquires).toBe(3);
      expect(s.probes).toBe(1);
      expect(s.z_offsets).toBe(1);
      const byTile = new Map(s.moves.map((m) => [m.tile, m]));
      expect(byTile.get(wrong1!.index)?.wrong_way).toBe(true);
      expect(byTile.get(wrong2!.index)?.wrong_way).toBe(true);
      expect(byTile.get(right!.index)?.wrong_way).toBe(false);
      expect(s.moves.filter((m) => m.type === 'z_offset')).toEqual([expect.objectContaining({ tile: zoff!.index + 1, wrong_way: true })]);
      expect(s.wrong_way).toEqual({ reacquire: 2, z_offset: 1 });
      expect(s.wrong_way_moves).toBe(3);
      // the z_offset moved the plan of every later tile, tilted along x about the tile that triggered it
      const det = s.tiles_detail;
      for (const t of slide.tiles.filter((t) => t.index > zoff!.index))
        expect(det[t.index]!.planned_z_um - det[0]!.planned_z_um, `tile ${t.index}`).toBeCloseTo(s.z_offset_sum_um + (1.5 * (t.x - zoff!.x)) / 1000, 2);
      expect(Math.abs(s.z_offset_sum_um)).toBe(2.5);
      // the right move brought its tile within 0.2 µm of focus (the drift moves on by one acquisition)
      expect(Math.abs(det[right!.index]!.final_defocus_um)).toBeLessThan(0.2);
    } finally {
      await script.endAsync();
    }
  });

  it('router, restart between slides: each slide gets a new daemon on the same state, which holds both slides', async () => {
    const scanner = uniqueId('sim');
    const stateDir = mkdtempSync(join(tmpdir(), 'focusd-sim-state-'));
    const endpoints: string[] = [];
    const inner = inProcessDaemons({
      load: { file: null, args: [], env: {}, overrides: { 'scanner.id': scanner, 'mqtt.url': MOSQUITTO_URL, 'log.level': 'error' } },
      pattern: 'router',
      stateDir,
    });
    const factory: DaemonFactory = async (run) => {
      const d = await inner(run);
      endpoints.push(d.endpoint);
      return d;
    };
    try {
      const r = await runSimulation({
        instrument: 'none', slides: 2, seed: 9, cols: 2, rows: 2, width: 640, height: 320, daemon: factory, runs: ['feedback'], restartBetweenSlides: true,
      });
      expect(endpoints).toHaveLength(2);
      const slides = r.with_feedback!.slides;
      expect(slides).toHaveLength(2);
      expect(r.with_feedback!.daemon).toMatchObject({ restarted_between_slides: true });
      const db = new Database(join(stateDir, 'feedback', 'focusd.sqlite'), { readonly: true });
      try {
        const rows = db.prepare('SELECT slide, COUNT(*) AS n FROM tiles WHERE scanner = ? GROUP BY slide ORDER BY slide').all(scanner) as Array<{ slide: string; n: number }>;
        expect(rows).toEqual(slides.map((s) => ({ slide: s.slide, n: s.acquisitions })));
      } finally {
        db.close();
      }
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});
