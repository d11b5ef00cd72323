// The two optics models agree: imaging/optics.ts (tests, demo, benchmark, classical calibration) and
// models/training/optics.py (what the shipped CNN was trained on). The CNN reads the sign of defocus from the
// ±z asymmetries (axial chromatic shift, spherical aberration); if the two disagree on them, every procedural
// tile shows the network a mirror image of its training world (it did: TS z rendered what Python calls −z).
// The Python side (models/training/optics_mtf.py) is committed as test/fixtures/optics-mtf.json by
// test/fixtures/make_fixtures.py; test/fixtures/test_fixtures.py keeps it current. No Python needed here.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_OPTICS, DefocusOptics, channelMtf } from '../../imaging/optics.js';
import { ROOT } from '../helpers/proc.js';

const PX = 0.22;
const Z = [-3, -1, 0, 1, 3];
const NF = 48;
// Exact radial OTF (TS: Hankel transforms) vs the training kernel's OTF (Python: FFT of a sampled pupil,
// 128-px support, pixel-integrated). Measured max |difference| over 0..Nyquist: ≤ 0.023 for every channel and z
// (discretisation of the Python pupil); a mirrored sign convention differs by 0.26–0.41.
const OTF_TOL = 0.035;
// ±z asymmetry, mean OTF(+z) − mean OTF(−z) over 0..Nyquist: measured agreement within 0.004.
const ASYM_TOL = 0.012;
// The blur actually applied to tiles is a sum of Gaussians fitted to the exact OTF (DefocusOptics.kernel, a
// documented approximation: its greedy fit stops at RMS ≈ 0.02; worst single frequency ≈ 0.09 in focus).
// Measured RMS against Python ≤ 0.035; asymmetry within ≈ 0.01.
const FIT_RMS_TOL = 0.045;
const FIT_ASYM_TOL = 0.025;

interface PyOtf {
  optics: { na: number; n: number; pixel_um: number; wavelengths_um: number[]; chroma_um: number[]; sa_waves: number };
  f: number[];
  z: number[];
  otf: number[][][]; // [z][channel][frequency]
}

const CH = [0, 1, 2] as const;
const NAMES = ['red', 'green', 'blue'];
const mean = (a: ArrayLike<number>) => Array.from(a).reduce((s, v) => s + v, 0) / a.length;

describe('optics parity: imaging/optics.ts vs models/training/optics.py', () => {
  // made with optics_mtf.py --z=-3,-1,0,1,3 --nf 48 --pixel 0.22 --size 128 --sub 2 (make_fixtures.py OPTICS_ARGS)
  const py = JSON.parse(readFileSync(join(ROOT, 'test', 'fixtures', 'optics-mtf.json'), 'utf8')) as PyOtf;
  const ts: number[][][] = Z.map((z) => CH.map((c) => Array.from(channelMtf(DEFAULT_OPTICS, c, z, PX, NF).mtf)));

  it('the fixture was made at the z values and frequencies compared here', () => {
    expect(py.z).toEqual(Z);
    expect(py.f).toHaveLength(NF + 1);
  });

  it('the TS defaults are the Python training defaults', () => {
    expect(DEFAULT_OPTICS.na).toBe(py.optics.na);
    expect(DEFAULT_OPTICS.immersionIndex).toBe(py.optics.n);
    expect(DEFAULT_OPTICS.wavelengthsUm).toEqual(py.optics.wavelengths_um);
    expect(DEFAULT_OPTICS.chromaticShiftUm).toEqual(py.optics.chroma_um);
    expect(DEFAULT_OPTICS.sphericalWaves).toBe(py.optics.sa_waves);
    expect(py.f).toHaveLength(NF + 1);
    expect(py.f[NF]).toBeCloseTo(0.5, 9);
  });

  it.each(Z.map((z, i) => [z, i] as const))('z = %d µm: per-channel OTF agrees within 0.035 from 0 to Nyquist', (z, i) => {
    for (const c of CH) {
      const p = py.otf[i]![c]!;
      const t = ts[i]![c]!;
      const worst = Math.max(...t.map((v, q) => Math.abs(v - p[q]!)));
      expect(worst, `${NAMES[c]} at z=${z}`).toBeLessThanOrEqual(OTF_TOL);
      // and it is not the mirror image: the other sign of z is far off wherever the optics are asymmetric
      if (z !== 0) {
        const mirror = channelMtf(DEFAULT_OPTICS, c, -z, PX, NF).mtf;
        const worstMirror = Math.max(...Array.from(mirror, (v, q) => Math.abs(v - p[q]!)));
        expect(worstMirror, `${NAMES[c]} at z=${z}, mirrored`).toBeGreaterThan(2 * OTF_TOL);
      }
    }
  });

  it('the same sign of z blurs each channel more, by the same amount (the sign cue the CNN learned)', () => {
    for (const zAbs of [1, 3]) {
      const ip = Z.indexOf(zAbs);
      const im = Z.indexOf(-zAbs);
      for (const c of CH) {
        const aPy = mean(py.otf[ip]![c]!) - mean(py.otf[im]![c]!);
        const aTs = mean(ts[ip]![c]!) - mean(ts[im]![c]!);
        expect(Math.abs(aTs - aPy), `${NAMES[c]} ±${zAbs}`).toBeLessThanOrEqual(ASYM_TOL);
        if (Math.abs(aPy) > 0.005) expect(Math.sign(aTs), `${NAMES[c]} ±${zAbs}`).toBe(Math.sign(aPy));
      }
    }
    // red is sharpest above focus (chroma +0.25 µm), so at ±1 µm it is sharper at +1: the strongest cue
    const r1 = mean(py.otf[Z.indexOf(1)]![0]!) - mean(py.otf[Z.indexOf(-1)]![0]!);
    expect(r1).toBeGreaterThan(0.05);
  });

  it('the fitted blur kernels that render tiles follow the Python OTF too, ±z asymmetry included', () => {
    const optics = new DefocusOptics();
    const fitted = Z.map((z) => CH.map((c) => {
      const k = optics.kernel(c, z, PX);
      return py.f.map((f) => k.sigmasPx.reduce((m, s, j) => m + k.weights[j]! * Math.exp(-2 * Math.PI * Math.PI * s * s * f * f), 0));
    }));
    Z.forEach((z, i) => {
      for (const c of CH) {
        const p = py.otf[i]![c]!;
        const rms = Math.sqrt(mean(fitted[i]![c]!.map((v, q) => (v - p[q]!) ** 2)));
        expect(rms, `${NAMES[c]} at z=${z}`).toBeLessThanOrEqual(FIT_RMS_TOL);
      }
    });
    for (const zAbs of [1, 3]) {
      const ip = Z.indexOf(zAbs);
      const im = Z.indexOf(-zAbs);
      for (const c of CH) {
        const aPy = mean(py.otf[ip]![c]!) - mean(py.otf[im]![c]!);
        const aFit = mean(fitted[ip]![c]!) - mean(fitted[im]![c]!);
        expect(Math.abs(aFit - aPy), `${NAMES[c]} ±${zAbs}`).toBeLessThanOrEqual(FIT_ASYM_TOL);
        if (Math.abs(aPy) > 0.02) expect(Math.sign(aFit), `${NAMES[c]} ±${zAbs}`).toBe(Math.sign(aPy));
      }
    }
  });
});
