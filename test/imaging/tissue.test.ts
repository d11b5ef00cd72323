import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TileHeader } from '../../core/types.js';
import { synthTile, type SynthKind } from '../../sim/procedural.js';
import { DefocusOptics } from '../../imaging/optics.js';
import { detectTissue, tissueShareIn } from '../../imaging/tissue.js';
import { ClassicalScorer } from '../../models/classical.js';
import { scoringContext } from '../helpers/scoring-ctx.js';

const W = 800;
const H = 600;
const optics = new DefocusOptics();
const { ctx } = scoringContext();
const header = { pixel_size_um: 0.22 } as TileHeader;

describe('detectTissue', () => {
  const frac = (kind: SynthKind, seed: number, z = 0) => {
    const t = synthTile({ width: W, height: H, seed, kind, defocusUm: z }, optics);
    return { map: detectTissue(t.rgb, W, H, ctx.config.tissue), truth: t.truthTissueFraction };
  };

  it('finds H&E and pale PAS-like tissue, in focus and defocused', () => {
    for (const kind of ['tissue', 'pale'] as const)
      for (const seed of [1, 2, 3])
        for (const z of [0, 5]) {
          const { map, truth } = frac(kind, seed, z);
          expect(map.fraction, `${kind} seed ${seed} z ${z}`).toBeGreaterThan(Math.max(ctx.config.tissue.minFraction * 2, truth * 0.6));
        }
  });

  it('glass, dust, pen marks and a tissue rim stay below tissue.minFraction', () => {
    for (const kind of ['glass', 'dust', 'pen', 'rim'] as const)
      for (const seed of [1, 2, 3, 4])
        for (const z of [0, 4]) {
          const { map } = frac(kind, seed, z);
          expect(map.fraction, `${kind} seed ${seed} z ${z}`).toBeLessThan(ctx.config.tissue.minFraction);
        }
  });

  it('the rim really has some tissue along one edge, the mask shows where', () => {
    let found = false;
    for (const seed of [2, 3, 5]) {
      const { map } = frac('rim', seed);
      if (map.fraction <= 0.003) continue;
      found = true;
      const edges = [tissueShareIn(map, 0, 0, 40, H), tissueShareIn(map, W - 40, 0, 40, H), tissueShareIn(map, 0, 0, W, 40), tissueShareIn(map, 0, H - 40, W, 40)];
      const centre = tissueShareIn(map, W / 4, H / 4, W / 2, H / 2);
      expect(Math.max(...edges)).toBeGreaterThan(0.1);
      expect(centre).toBe(0);
    }
    expect(found).toBe(true);
  });

  it('pen marks are opaque cells, not tissue', () => {
    const t = synthTile({ width: W, height: H, seed: 1, kind: 'pen' }, optics);
    const m = detectTissue(t.rgb, W, H, ctx.config.tissue);
    expect(m.opaque.reduce((a, b) => a + b, 0)).toBeGreaterThan(50);
  });

  it('rejects a buffer that is too small with a clear error', () => {
    expect(() => detectTissue(Buffer.alloc(10), 100, 100, ctx.config.tissue)).toThrow(/too small/);
  });
});

describe('no_tissue through the scorer', () => {
  const scorer = new ClassicalScorer(ctx);
  beforeAll(() => scorer.start());
  afterAll(() => scorer.stop());

  it('glass, dust, pen and rim tiles score no_tissue with their tissue fraction; tissue tiles get a defocus', async () => {
    for (const kind of ['glass', 'dust', 'pen', 'rim', 'tissue', 'pale'] as const) {
      const t = synthTile({ width: W, height: H, seed: 3, kind, defocusUm: 3 }, optics);
      const r = await scorer.score({ header, width: W, height: H, rgb: t.rgb, receivedAt: 0 });
      if (kind === 'tissue' || kind === 'pale') {
        expect(r.defocus_um, kind).not.toBeNull();
        expect(r.tissue_fraction).toBeGreaterThan(ctx.config.tissue.minFraction);
      } else {
        expect(r.defocus_um, kind).toBeNull();
        expect(r.sign_confidence).toBeNull();
        expect(r.patches).toBe(0);
        expect(r.tissue_fraction).toBeLessThan(ctx.config.tissue.minFraction);
        expect(r.tissue_fraction).toBeGreaterThanOrEqual(0);
      }
    }
  });
});
