import { describe, expect, it } from 'vitest';
import { synthTile } from '../../sim/procedural.js';
import { DefocusOptics } from '../../imaging/optics.js';
import { detectTissue } from '../../imaging/tissue.js';
import { axisPositions, MAX_PATCH_CELLS, type ModelInput, planPatches, planTile } from '../../models/patches.js';
import { scoringContext } from '../helpers/scoring-ctx.js';

const optics = new DefocusOptics();
const { ctx } = scoringContext();
const cfg = { tissue: ctx.config.tissue, patches: ctx.config.scoring.patches };

/** The shipped model's input (320 px at 0.22 µm), and the tiny test net's (64 px at 0.44 µm). */
const input = (size: number, px: number): ModelInput => ({
  name: 'input',
  layout: 'NCHW',
  size: [size, size],
  channel_order: 'RGB',
  pixel_size_um: px,
  normalisation: { scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1] },
});
const SHIPPED = input(320, 0.22);

/** Tile of glass with the rows [y0, y1) copied from a blurred tissue tile of the same size: real pixels both. */
function glassWithTissueRows(w: number, h: number, rows: (y: number) => boolean, z = 3) {
  const glass = synthTile({ width: w, height: h, seed: 41, kind: 'glass' }, optics);
  const tis = synthTile({ width: w, height: h, seed: 42, kind: 'tissue', defocusUm: z }, optics);
  for (let y = 0; y < h; y++) if (rows(y)) tis.rgb.copy(glass.rgb, y * w * 3, y * w * 3, (y + 1) * w * 3);
  return glass;
}

describe('patch grid covers the whole tile', () => {
  const cases: Array<[number, number, ModelInput, number]> = [
    [800, 600, SHIPPED, 0.22],
    [1600, 1200, SHIPPED, 0.22],
    [1024, 768, input(64, 0.44), 0.22], // 128 tile px per patch, an exact fit
    [1000, 700, input(64, 0.44), 0.22],
    [1600, 1200, SHIPPED, 0.3], // rescaled: 234.7 tile px per patch
    [320, 320, SHIPPED, 0.22], // exactly one patch
  ];
  for (const [w, h, inp, px] of cases) {
    it(`${w}x${h} at ${px} µm/px, ${inp.size[0]} px model patches at ${inp.pixel_size_um} µm/px: every pixel lies in some patch`, () => {
      const t = detectTissue(new Uint8Array(w * h * 3).fill(240), w, h, ctx.config.tissue);
      const plan = planPatches(w, h, px, inp, t, { maxPerTile: 0, minTissueFraction: 0 });
      const tw = (inp.size[1] * inp.pixel_size_um) / px;
      expect(plan.cols).toBe(Math.ceil(w / tw - 1e-6));
      expect(plan.rows).toBe(Math.ceil(h / tw - 1e-6));
      expect(plan.cells).toHaveLength(plan.rows * plan.cols);
      const cover = new Uint8Array(w * h);
      for (const c of plan.cells) {
        // inside the tile: the first starts at 0, the last ends at the tile edge
        expect(c.x).toBeGreaterThanOrEqual(0);
        expect(c.y).toBeGreaterThanOrEqual(0);
        expect(c.x + c.w).toBeLessThanOrEqual(w + 1e-6);
        expect(c.y + c.h).toBeLessThanOrEqual(h + 1e-6);
        // pixel (i, j) is in the patch when its centre is
        for (let y = Math.ceil(c.y - 0.5); y + 0.5 <= c.y + c.h && y < h; y++)
          for (let x = Math.ceil(c.x - 0.5); x + 0.5 <= c.x + c.w && x < w; x++) cover[y * w + x] = 1;
      }
      const missed = cover.reduce((n, v) => n + (v ? 0 : 1), 0);
      expect(missed).toBe(0);
    });
  }

  it('positions are spread evenly from 0 to L − patch and integral when the patch is', () => {
    expect(axisPositions(600, 320)).toEqual([0, 280]);
    expect(axisPositions(800, 320)).toEqual([0, 240, 480]);
    expect(axisPositions(1200, 320)).toEqual([0, 293, 587, 880]);
    expect(axisPositions(1024, 128)).toEqual([0, 128, 256, 384, 512, 640, 768, 896]);
    expect(axisPositions(320, 320)).toEqual([0]);
    expect(() => axisPositions(300, 320)).toThrow(/shorter than one patch/);
  });

  it('tissue only in the bottom 200 rows of an 800x600 tile is found and scored there', () => {
    const t = glassWithTissueRows(800, 600, (y) => y >= 400);
    const { tissue, hasTissue, plan } = planTile({ ...t, pixelSizeUm: 0.22 }, SHIPPED, cfg);
    expect(tissue.fraction).toBeGreaterThanOrEqual(ctx.config.tissue.minFraction);
    expect(hasTissue).toBe(true);
    expect(plan!.selected.length).toBeGreaterThan(0);
    // the old floor(H/320) grid had one row at y = 140..460: only the tissue's top 60 rows
    for (const c of plan!.selected) expect(c.y + c.h).toBe(600);
  });
});

describe('scattered tissue: no patch reaches minTissueFraction', () => {
  // bands of 12 tissue rows every 64 rows: the tile is well above tissue.minFraction, every patch below 25 %
  const scattered = () => glassWithTissueRows(1600, 1200, (y) => y % 64 < 12);

  it('the richest patches are scored anyway (fallback), never an empty selection', () => {
    const t = scattered();
    const { tissue, hasTissue, plan } = planTile({ ...t, pixelSizeUm: 0.22 }, SHIPPED, cfg);
    expect(tissue.fraction).toBeGreaterThanOrEqual(ctx.config.tissue.minFraction);
    expect(hasTissue).toBe(true);
    expect(Math.max(...plan!.cells.map((c) => c.tissue))).toBeLessThan(cfg.patches.minTissueFraction);
    expect(plan!.fallback).toBe(true);
    expect(plan!.selected.length).toBeGreaterThan(0);
    expect(plan!.selected.length).toBeLessThanOrEqual(cfg.patches.maxPerTile);
    const best = Math.max(...plan!.cells.map((c) => c.tissue));
    expect(plan!.selected[0]!.tissue).toBe(best);
    for (const c of plan!.selected) expect(c.tissue).toBeGreaterThanOrEqual(best / 2);
  });

  it('a normal tissue tile does not use the fallback', () => {
    const t = synthTile({ width: 800, height: 600, seed: 43, kind: 'tissue', defocusUm: 0 }, optics);
    const { plan } = planTile({ ...t, pixelSizeUm: 0.22 }, SHIPPED, cfg);
    expect(plan!.fallback).toBe(false);
    for (const c of plan!.selected) expect(c.tissue).toBeGreaterThanOrEqual(cfg.patches.minTissueFraction);
  });

  it('glass, dust, pen and rim tiles stay below tissue.minFraction (no_tissue), whatever the fallback picks', () => {
    for (const kind of ['glass', 'dust', 'pen', 'rim'] as const) {
      const t = synthTile({ width: 800, height: 600, seed: 44, kind, defocusUm: 3 }, optics);
      expect(planTile({ ...t, pixelSizeUm: 0.22 }, SHIPPED, cfg).hasTissue, kind).toBe(false);
    }
  });
});

describe('tiles smaller than one patch', () => {
  it('with tissue: a clear error, never an unscored pass', () => {
    const t = synthTile({ width: 300, height: 400, seed: 45, kind: 'tissue', defocusUm: 3 }, optics);
    expect(() => planTile({ ...t, pixelSizeUm: 0.22 }, SHIPPED, cfg)).toThrow(/tile 300x400 px is smaller than one model patch \(320x320 tile px/);
  });

  it('without tissue: no_tissue material, no plan', () => {
    const t = synthTile({ width: 300, height: 400, seed: 46, kind: 'glass' }, optics);
    expect(planTile({ ...t, pixelSizeUm: 0.22 }, SHIPPED, cfg)).toMatchObject({ hasTissue: false, plan: null });
  });
});

describe('the patch grid is bounded whatever the header says (issue 10, defect 1)', () => {
  it('a µm/nm slip in pixel_size_um throws at once instead of building a grid of ~10^10 cells', () => {
    const t = synthTile({ width: 1600, height: 1200, seed: 47, kind: 'tissue', defocusUm: 3 }, optics);
    for (const px of [1000, 220, 100]) {
      const t0 = performance.now();
      expect(() => planTile({ ...t, pixelSizeUm: px }, SHIPPED, cfg)).toThrow(new RegExp(`more than ${MAX_PATCH_CELLS} cells`));
      expect(performance.now() - t0, `${px} µm/px`).toBeLessThan(500);
    }
    // a grid just inside the bound is still laid out (16 tile px per patch at 4x the model's pixel size)
    const plan = planPatches(1600, 1200, 1.76, input(64, 0.44), detectTissue(t.rgb, 1600, 1200, cfg.tissue), cfg.patches);
    expect(plan.rows * plan.cols).toBe(100 * 75);
  });
});
