import type { CalibrationSample } from '../../models/calibration.js';
import { rng32 } from '../../sim/procedural.js';

/**
 * What an instrument's focus stack gives the model when its output is a signed line of the true z: raw = a + b·z
 * plus uniform noise (a shifted focus and a scale error), at `positions` lateral positions × `zs`.
 */
export function linearStack(positions: number, zs: number[], seed: number, a = 0.59, b = 1.157, noise = 0.15): CalibrationSample[] {
  const r = rng32(seed);
  const out: CalibrationSample[] = [];
  for (let p = 0; p < positions; p++)
    for (const z of zs) {
      const raw = a + b * z + noise * (r() - 0.5) * 2;
      out.push({ z_rel_um: z, abs_um: Math.abs(raw), sign_logit: raw >= 0 ? 4 : -4, position: `p${p}` });
    }
  return out;
}
