import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { SYNTH_KINDS, encodePng, synthTile } from '../../sim/procedural.js';
import { DefocusOptics, channelMtf } from '../../imaging/optics.js';

/** Mean squared Laplacian of the green channel: a plain sharpness number for assertions. */
function sharpness(rgb: Buffer, w: number, h: number, x0 = 0, x1 = w): number {
  let s = 0;
  let n = 0;
  for (let y = 1; y < h - 1; y++)
    for (let x = Math.max(1, x0); x < Math.min(w - 1, x1); x++) {
      const g = (yy: number, xx: number) => rgb[(yy * w + xx) * 3 + 1]!;
      const l = 4 * g(y, x) - g(y - 1, x) - g(y + 1, x) - g(y, x - 1) - g(y, x + 1);
      s += l * l;
      n++;
    }
  return s / n;
}

/** Per-channel mean and sd; stained: only pixels darker than glass in some channel. */
function channelStats(rgb: Buffer, stained = false) {
  let n = 0;
  const mean = [0, 0, 0];
  const sq = [0, 0, 0];
  for (let i = 0; i < rgb.length; i += 3) {
    if (stained && Math.min(rgb[i]!, rgb[i + 1]!, rgb[i + 2]!) > 225) continue;
    n++;
    for (let c = 0; c < 3; c++) {
      mean[c]! += rgb[i + c]!;
      sq[c]! += rgb[i + c]! * rgb[i + c]!;
    }
  }
  return mean.map((m, c) => ({ mean: m / n, sd: Math.sqrt(sq[c]! / n - (m / n) ** 2) }));
}

describe('synthTile', () => {
  const optics = new DefocusOptics();

  it('is seeded: same seed → same bytes, another seed → another image', () => {
    const a = synthTile({ width: 200, height: 150, seed: 5 }, optics);
    const b = synthTile({ width: 200, height: 150, seed: 5 }, optics);
    const c = synthTile({ width: 200, height: 150, seed: 6 }, optics);
    expect(a.rgb.equals(b.rgb)).toBe(true);
    expect(a.rgb.equals(c.rgb)).toBe(false);
  });

  it('renders every kind at any size as tightly packed 8-bit RGB', () => {
    for (const kind of SYNTH_KINDS) {
      const t = synthTile({ width: 333, height: 217, seed: 1, kind }, optics);
      expect(t.rgb.length).toBe(333 * 217 * 3);
      expect(t.width).toBe(333);
    }
  });

  it('empty glass is bright (≈240-250), nearly neutral, with a little sensor noise', () => {
    const s = channelStats(synthTile({ width: 400, height: 300, seed: 3, kind: 'glass' }, optics).rgb);
    for (const c of s) {
      expect(c.mean).toBeGreaterThan(232);
      expect(c.mean).toBeLessThan(252);
      expect(c.sd).toBeGreaterThan(0.8);
      expect(c.sd).toBeLessThan(5);
    }
  });

  it('H&E tissue is pink (green absorbed most) and PAS-like pale tissue is paler', () => {
    const he = channelStats(synthTile({ width: 400, height: 300, seed: 4, kind: 'tissue' }, optics).rgb, true);
    const pale = channelStats(synthTile({ width: 400, height: 300, seed: 4, kind: 'pale' }, optics).rgb, true);
    expect(he[1]!.mean).toBeLessThan(he[0]!.mean - 20);
    expect(he[1]!.mean).toBeLessThan(he[2]!.mean - 20);
    expect(pale[1]!.mean).toBeGreaterThan(he[1]!.mean + 10);
  });

  it('defocus removes fine detail monotonically, and +z and −z differ (spherical aberration, chromatic shift)', () => {
    // noise-free, so the Laplacian measures the image and not the sensor
    const s = [0, 1, 2, 4, 8].map((z) => sharpness(synthTile({ width: 300, height: 240, seed: 8, defocusUm: z, noise: false }, optics).rgb, 300, 240));
    for (let i = 1; i < s.length; i++) expect(s[i]!).toBeLessThan(s[i - 1]!);
    expect(s[0]! / s[4]!).toBeGreaterThan(5);
    const plus = synthTile({ width: 300, height: 240, seed: 8, defocusUm: 3, noise: false }, optics);
    const minus = synthTile({ width: 300, height: 240, seed: 8, defocusUm: -3, noise: false }, optics);
    expect(plus.rgb.equals(minus.rgb)).toBe(false);
    const mp = channelMtf(optics.params, 1, 3, 0.22);
    const mm = channelMtf(optics.params, 1, -3, 0.22);
    let diff = 0;
    for (let i = 0; i < mp.mtf.length; i++) diff = Math.max(diff, Math.abs(mp.mtf[i]! - mm.mtf[i]!));
    expect(diff).toBeGreaterThan(0.01);
  });

  it('the in-focus MTF is diffraction limited: high at low frequency, falling towards Nyquist, never above 1', () => {
    const { mtf } = channelMtf(optics.params, 1, 0, 0.22);
    expect(mtf[0]).toBeCloseTo(1, 6);
    for (const v of mtf) expect(v).toBeLessThanOrEqual(1 + 1e-6);
    expect(mtf[mtf.length - 1]!).toBeLessThan(0.4);
    expect(mtf[10]!).toBeGreaterThan(0.6);
  });

  it('half-defocused and tilted tiles are sharp on one side, blurred on the other', () => {
    const half = synthTile({ width: 400, height: 240, seed: 9, defocusUm: 6, halfDefocus: true, noise: false }, optics);
    expect(sharpness(half.rgb, 400, 240, 0, 180)).toBeGreaterThan(3 * sharpness(half.rgb, 400, 240, 220, 400));
    const tilt = synthTile({ width: 400, height: 240, seed: 9, defocusUm: 3, tilt: { dzdx: 6, dzdy: 0 }, noise: false }, optics);
    expect(sharpness(tilt.rgb, 400, 240, 0, 130)).toBeGreaterThan(2 * sharpness(tilt.rgb, 400, 240, 270, 400));
  });

  it('encodePng round-trips through sharp', async () => {
    const t = synthTile({ width: 120, height: 80, seed: 2 }, optics);
    const png = await encodePng(t);
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([120, 80, 3]);
    expect(Buffer.compare(data, t.rgb)).toBe(0);
  });
});
