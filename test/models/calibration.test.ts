// Calibration: sharpest slice of a synthetic focus stack, recovery of a known linear distortion, sign decision,
// calibrated bundle writing, and `focusd calibrate` end to end on a generated stack (never /work/shared).
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBundle } from '../../models/bundle.js';
import {
  type CalibrationSample,
  findInFocus,
  fitCalibration,
  fitLinear,
  type GrayImage,
  signTest,
  spearman,
  toGray,
  writeCalibratedBundle,
} from '../../models/calibration.js';
import { type ModelManifest, toPrediction } from '../../models/manifest.js';
import { calibrateMain } from '../../cli/calibrate.js';
import { listStack } from '../../models/calibrate-stack.js';
import { rng32 } from '../../sim/procedural.js';

const DEFAULT = resolve(import.meta.dirname, '..', '..', 'models', 'default');

/** mulberry32, seeded (the procedural generator's). */
const rng = rng32;

/** Tissue-like RGB pattern: blobs (cells) on a pink background, plus fine grain. */
function pattern(w: number, h: number, seed: number): Float32Array {
  const r = rng(seed);
  const img = new Float32Array(w * h * 3);
  const base = [235, 200, 225];
  for (let i = 0; i < w * h; i++) for (let c = 0; c < 3; c++) img[i * 3 + c] = base[c]! - 25 * r();
  for (let k = 0; k < (w * h) / 180; k++) {
    const cx = r() * w, cy = r() * h, rad = 2 + 5 * r();
    const col = r() < 0.5 ? [80, 40, 140] : [190, 90, 160];
    for (let y = Math.max(0, Math.floor(cy - rad)); y < Math.min(h, cy + rad); y++) {
      for (let x = Math.max(0, Math.floor(cx - rad)); x < Math.min(w, cx + rad); x++) {
        if ((x - cx) ** 2 + (y - cy) ** 2 <= rad * rad) for (let c = 0; c < 3; c++) img[(y * w + x) * 3 + c] = col[c]!;
      }
    }
  }
  return img;
}

/** Separable Gaussian blur of an interleaved RGB float image (sigma 0 = copy). */
function blur(img: Float32Array, w: number, h: number, sigma: number): Float32Array {
  if (sigma < 0.05) return img.slice();
  const rad = Math.ceil(3 * sigma);
  const k = Array.from({ length: 2 * rad + 1 }, (_, i) => Math.exp(-((i - rad) ** 2) / (2 * sigma * sigma)));
  const ks = k.reduce((a, b) => a + b, 0);
  const pass = (src: Float32Array, horizontal: boolean) => {
    const dst = new Float32Array(src.length);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        for (let c = 0; c < 3; c++) {
          let s = 0;
          for (let t = -rad; t <= rad; t++) {
            const xx = horizontal ? Math.min(w - 1, Math.max(0, x + t)) : x;
            const yy = horizontal ? y : Math.min(h - 1, Math.max(0, y + t));
            s += k[t + rad]! * src[(yy * w + xx) * 3 + c]!;
          }
          dst[(y * w + x) * 3 + c] = s / ks;
        }
      }
    }
    return dst;
  };
  return pass(pass(img, true), false);
}

const toU8 = (f: Float32Array) => Uint8Array.from(f, (v) => Math.max(0, Math.min(255, Math.round(v))));

// z grid with an in-focus plane that is NOT at z = 0 (as on real instruments)
const Z_FOCUS = 1.5;
const ZS = [-6, -4, -2.5, -1, 0, 0.5, 1.5, 2.5, 4, 6];
const sigmaAt = (z: number) => 0.9 * Math.abs(z - Z_FOCUS);

describe('focus measures and in-focus slice', () => {
  it('std and normalised variance of Laplacian both find the sharpest slice of a synthetic stack', () => {
    const w = 96, h = 96;
    const base = pattern(w, h, 3);
    const slices = ZS.map((z) => ({ z_um: z, image: toGray(toU8(blur(base, w, h, sigmaAt(z))), w, h, 3) as GrayImage }));
    for (const m of ['std', 'nvl', 'brenner'] as const) {
      const r = findInFocus(slices, m);
      expect(r.z_um, m).toBe(Z_FOCUS);
      // the score falls off monotonically on both sides of focus
      const i = r.index;
      for (let j = i; j + 1 < ZS.length; j++) expect(r.scores[j]!).toBeGreaterThan(r.scores[j + 1]!);
      for (let j = i; j - 1 >= 0; j--) expect(r.scores[j]!).toBeGreaterThan(r.scores[j - 1]!);
    }
  });
});

describe('fitting model output to µm', () => {
  let manifest: ModelManifest;
  beforeAll(async () => {
    manifest = (await loadBundle(DEFAULT)).manifest;
  });
  const r = rng(11);
  const zRel = Array.from({ length: 60 }, (_, i) => -5 + (10 * i) / 59);
  // the model reads the instrument as raw = 0.59 + 1.157 * z (plus a little noise)
  const distorted = (signFlip = 1): CalibrationSample[] =>
    zRel.map((z) => {
      const raw = 0.59 + 1.157 * z + 0.1 * (r() - 0.5);
      return { z_rel_um: z, abs_um: Math.abs(raw), sign_logit: signFlip * (raw >= 0 ? 3 : -3) };
    });

  it('recovers y = 0.59 + 1.157x: calibrated predictions equal z', () => {
    const s = distorted();
    const f = fitCalibration(manifest, s, { now: new Date(0) });
    expect(f.calibration.sign).toBe('model');
    expect(f.calibration.slope).toBeCloseTo(1 / 1.157, 2);
    expect(f.calibration.intercept).toBeCloseTo(-0.59 / 1.157, 2);
    expect(f.calibration.fitted_at).toBe('1970-01-01T00:00:00.000Z');
    const m = { ...manifest, calibration: f.calibration };
    for (const x of s) expect(Math.abs(toPrediction(m, x.abs_um, x.sign_logit).defocus_um - x.z_rel_um)).toBeLessThan(0.1);
    expect(f.mae_um_after).toBeLessThan(0.05);
    expect(f.mae_um_before).toBeGreaterThan(0.4);
    expect(f.within_1um_after).toBe(1);
  });

  it('robust fit ignores outliers that pull least squares off', () => {
    const x = zRel.map((z) => 0.59 + 1.157 * z);
    const y = [...zRel];
    for (const i of [3, 17, 40, 55]) y[i] = y[i]! + 25;
    const ols = fitLinear(x, y);
    const hub = fitLinear(x, y, { robust: true });
    expect(Math.abs(hub.slope - 1 / 1.157)).toBeLessThan(0.01);
    expect(Math.abs(hub.intercept + 0.59 / 1.157)).toBeLessThan(0.05);
    expect(Math.abs(ols.intercept + 0.59 / 1.157)).toBeGreaterThan(0.5);
  });

  it('detects an inverted z axis and a sign that carries no information', () => {
    const inv = fitCalibration(manifest, distorted(-1));
    expect(inv.calibration.sign).toBe('inverted');
    const m = { ...manifest, calibration: inv.calibration };
    const s = distorted(-1);
    expect(Math.abs(toPrediction(m, s[5]!.abs_um, s[5]!.sign_logit).defocus_um - s[5]!.z_rel_um)).toBeLessThan(0.15);

    const coin = rng(5);
    const noSign = distorted().map((x) => ({ ...x, sign_logit: coin() < 0.5 ? 2 : -2 }));
    const un = fitCalibration(manifest, noSign);
    expect(un.sign.decision).toBe('unrecoverable');
    // magnitude only: |pred| still maps to |z|
    expect(un.spearman_abs_after).toBeGreaterThan(0.8);
    const t = signTest([1, 2, -1, -2], [1, 1, -1, -1]);
    expect(t.decision).toBe('unrecoverable'); // 4 of 4 is not beyond chance at alpha 0.01
    expect(t.agree).toBe(4);
  });

  it('Spearman handles order, reversal and ties', () => {
    expect(spearman([1, 2, 3, 4], [10, 20, 30, 40])).toBeCloseTo(1, 12);
    expect(spearman([1, 2, 3, 4], [4, 3, 2, 1])).toBeCloseTo(-1, 12);
    expect(spearman([1, 1, 2, 3], [1, 2, 3, 4])).toBeGreaterThan(0.9);
  });
});

describe('calibrated bundles and focusd calibrate', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'focusd-cal-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('writeCalibratedBundle copies the model, keeps its sha256 valid and updates calibration and metrics', async () => {
    const cal = { slope: 0.864, intercept: -0.51, sign: 'inverted' as const, source: 'test' };
    const out = join(dir, 'cal-bundle');
    const b = await writeCalibratedBundle(DEFAULT, out, cal, { spearman: 0.9 });
    expect(b.manifest.calibration).toEqual(cal);
    expect((b.manifest.metrics as Record<string, unknown>)['calibration']).toEqual({ spearman: 0.9 });
    const src = await loadBundle(DEFAULT);
    expect(b.manifest.sha256).toBe(src.manifest.sha256);
    expect(src.manifest.calibration.sign).toBe('model'); // source untouched
    await expect(writeCalibratedBundle(DEFAULT, out, { ...cal, slope: -1 })).rejects.toThrow(/calibration\/slope/);
  });

  it('calibrates from a generated focus stack on disk: in-focus slice found, bundle written, report printed', async () => {
    const stack = join(dir, 'stack');
    const w = 400, h = 400;
    const base = pattern(w, h, 9);
    await mkdir(stack, { recursive: true });
    await Promise.all(
      ZS.map((z) => {
        const name = `tile_ix000_z${z >= 0 ? '+' : '-'}${Math.abs(z).toFixed(3).padStart(7, '0')}um.png`;
        const rgb = Buffer.from(toU8(blur(base, w, h, sigmaAt(z) * 1.5)));
        return sharp(rgb, { raw: { width: w, height: h, channels: 3 } }).png().toFile(join(stack, name));
      }),
    );
    const out = join(dir, 'calibrated');
    const writes: string[] = [];
    const errs: string[] = [];
    const orig = process.stdout.write.bind(process.stdout);
    const origErr = process.stderr.write.bind(process.stderr);
    process.stdout.write = ((s: string) => (writes.push(String(s)), true)) as typeof process.stdout.write;
    process.stderr.write = ((s: string) => (errs.push(String(s)), true)) as typeof process.stderr.write;
    let code: number;
    try {
      code = await calibrateMain([stack, '--out', out, '--pixel-size', '0.22', '--patches', '1', '--robust']);
    } finally {
      process.stdout.write = orig;
      process.stderr.write = origErr;
    }
    expect(code).toBe(0);
    const report = JSON.parse(writes.join('')) as Record<string, any>;
    const pos = Object.values(report.in_focus as Record<string, { z_focus_std_um: number; z_focus_nvl_um: number }>);
    expect(pos).toHaveLength(1);
    expect(pos[0]!.z_focus_std_um).toBe(Z_FOCUS);
    expect(pos[0]!.z_focus_nvl_um).toBe(Z_FOCUS);
    expect(report.images).toBe(ZS.length);
    expect(report.slices.find((s: { z_um: number }) => s.z_um === Z_FOCUS).z_rel_um).toBe(0);
    const b = await loadBundle(out);
    expect(b.manifest.calibration).toEqual(report.calibration);
    expect((b.manifest.metrics as Record<string, any>)['calibration'].fit_samples).toBe(report.fit_samples);
    expect(JSON.parse(await readFile(join(out, 'calibration-report.json'), 'utf8')).calibration).toEqual(report.calibration);
    // the blur grows away from focus, so the model's |output| must rank the slices in the right order
    expect(report.spearman_abs_all).toBeGreaterThan(0.5);
    // both magnitude forms are reported with their held-out numbers (abs is null when the sign is unrecoverable)
    expect(report.magnitude_forms.signed).toMatchObject({ form: 'signed', heldout: { mae_um: expect.any(Object) } });
    expect(report.magnitude_forms.abs === null ? report.sign.decision : report.magnitude_forms.abs.form).toBe(report.magnitude_forms.abs === null ? 'unrecoverable' : 'abs');
    expect(typeof report.magnitude_choice).toBe('string');
    expect(errs.join('')).toMatch(/magnitude forms \(identity → fit\):\n  signed .*MAE/);
  });

  it('a manifest without ix,iy whose file names carry no _z…um part: says what it needs instead of fitting nonsense', async () => {
    const stack = join(dir, 'no-positions');
    await mkdir(stack, { recursive: true });
    const w = 64, h = 64;
    const rows = ['file,z_um'];
    for (const [i, z] of ZS.entries()) {
      await sharp(Buffer.from(toU8(blur(pattern(w, h, 3), w, h, sigmaAt(z)))), { raw: { width: w, height: h, channels: 3 } }).png().toFile(join(stack, `slice${i}.png`));
      rows.push(`slice${i}.png,${z}`);
    }
    await writeFile(join(stack, 'manifest.csv'), rows.join('\n') + '\n');
    await expect(listStack(stack)).rejects.toThrow(/no lateral position has 3 or more slices at different z \(\d+ images in \d+ positions\).*ix,iy/);
    // with ix,iy the same slices are one position and the listing goes through
    await writeFile(join(stack, 'manifest.csv'), ['file,z_um,ix,iy', ...rows.slice(1).map((r) => `${r},0,0`)].join('\n') + '\n');
    const listed = await listStack(stack);
    expect(new Set(listed.map((x) => x.position))).toEqual(new Set(['ix0_iy0']));
    const errs: string[] = [];
    const orig = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((s: string) => (errs.push(String(s)), true)) as typeof process.stderr.write;
    try {
      await writeFile(join(stack, 'manifest.csv'), rows.join('\n') + '\n');
      expect(await calibrateMain([stack, '--out', join(dir, 'np-out')])).toBe(1);
    } finally {
      process.stderr.write = orig;
    }
    expect(errs.join('')).toMatch(/Add ix,iy columns to manifest.csv/);
    expect(errs.join('')).not.toMatch(/slope/);
  });

  it('fails clearly on a directory without a stack', async () => {
    const errs: string[] = [];
    const orig = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((s: string) => (errs.push(String(s)), true)) as typeof process.stderr.write;
    try {
      expect(await calibrateMain([dir, '--out', join(dir, 'x')])).toBe(1);
      expect(await calibrateMain([])).toBe(64);
    } finally {
      process.stderr.write = orig;
    }
    expect(errs.join('')).toMatch(/no images with z in the name/);
  });
});
