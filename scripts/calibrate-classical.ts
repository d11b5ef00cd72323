/**
 * Makes models/classical/calibration.json: the classical focus measure's features at known |z|, measured on
 * synthetic tiles defocused by our own optics model (imaging/synth.ts). Both signs of z are pooled (the measure
 * is sign-blind); H&E and pale PAS-like tissue, several seeds.
 *
 *   npx tsx scripts/calibrate-classical.ts [--out models/classical/calibration.json] [--seeds 3] [--size 640x480]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { loadConfig, PACKAGE_ROOT } from '../config/load.js';
import { synthTile, type SynthKind } from '../sim/procedural.js';
import { DefocusOptics } from '../imaging/optics.js';
import {
  CLASSICAL_PATCH,
  CLASSICAL_SIGMAS,
  type ClassicalCalibration,
  classicalBuffers,
  classicalFeatures,
  classicalInput,
} from '../models/classical.js';

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
};
const out = resolve(arg('out', resolve(PACKAGE_ROOT, 'models/classical/calibration.json')));
const seeds = Number(arg('seeds', '3'));
const [W, H] = arg('size', '640x480').split('x').map(Number) as [number, number];
const PX = 0.22;
const Z = [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10, 12, 15];
const KINDS: SynthKind[] = ['tissue', 'pale'];

const cfg = loadConfig({ overrides: { 'scoring.scorer': 'classical', 'scoring.patches.maxPerTile': 0 }, env: {} });
const input = classicalInput(PX, CLASSICAL_PATCH);
const bufs = classicalBuffers(input);
const optics = new DefocusOptics();
const table: ClassicalCalibration['table'] = [];
const t0 = Date.now();
for (const z of Z) {
  const rows: number[][] = [];
  for (const sign of z === 0 ? [1] : [1, -1]) {
    for (const kind of KINDS) {
      for (let s = 0; s < seeds; s++) {
        const tile = synthTile({ width: W, height: H, seed: 1000 + s, kind, defocusUm: sign * z, pixelSizeUm: PX }, optics);
        const f = classicalFeatures({ ...tile, pixelSizeUm: PX }, { tissue: cfg.tissue, patches: cfg.scoring.patches }, input, bufs);
        for (const p of f.patches) rows.push(p.r);
      }
    }
  }
  const k = rows[0]?.length ?? 0;
  const mean = Array.from({ length: k }, (_, j) => rows.reduce((a, r) => a + r[j]!, 0) / rows.length);
  const sd = Array.from({ length: k }, (_, j) => Math.sqrt(rows.reduce((a, r) => a + (r[j]! - mean[j]!) ** 2, 0) / Math.max(1, rows.length - 1)));
  table.push({ abs_um: z, mean: mean.map((v) => +v.toFixed(4)), sd: sd.map((v) => +v.toFixed(4)), n: rows.length });
  console.log(`|z| ${z.toFixed(2)} µm: n=${rows.length} mean=${mean.map((v) => v.toFixed(3)).join(',')} sd=${sd.map((v) => v.toFixed(3)).join(',')}`);
}
const cal: ClassicalCalibration = {
  schema: 1,
  measure: 'dog-band-ratios',
  sigmas_px: [...CLASSICAL_SIGMAS],
  patch_px: CLASSICAL_PATCH,
  pixel_size_um: PX,
  table,
  source: `scripts/calibrate-classical.ts: synthetic ${KINDS.join('+')} tiles ${W}x${H} @${PX} µm/px, seeds 1000..${1000 + seeds - 1}, z = ±${Z.join(', ±')} µm, optics NA 0.8 (imaging/optics.ts DefocusOptics)`,
  created_at: new Date().toISOString(),
};
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(cal, null, 1) + '\n');
console.log(`wrote ${out} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
