// focusd calibrate STACK_DIR --out DIR: fit the model to one instrument's focus stack (models/calibrate-stack.ts does the work).
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_MODEL_DIR } from '../config/load.js';
import type { FocusMeasure } from '../models/calibration.js';
import { calibrate, magnitudeSummary, MIN_SLICES_PER_POSITION } from '../models/calibrate-stack.js';

const USAGE = `usage: focusd calibrate STACK_DIR --out DIR [options]

STACK_DIR: a focus stack of this instrument, several lateral positions (tissue, each imaged at z steps through
focus, e.g. -6..+6 µm in 0.5 µm), either with z in the file names (pos1_z-002.0um.png, pos1_z+000.0um.png, ...; the
name without _z...um is the position) or listed in STACK_DIR/manifest.csv (columns file,z_um and optionally ix,iy
for the position). At least ${MIN_SLICES_PER_POSITION} slices per position; more positions let the fit be checked on positions it did not
see (docs/scoring.md). Pixel size: --pixel-size, or a JSON beside each image with imageWidth in µm.

  --model DIR          bundle to calibrate (default: the shipped models/default)
  --pixel-size UM      µm per pixel of the stack images (default: from a JSON beside each image with imageWidth in µm,
                       else the model's own pixel size)
  --measure M          focus measure that defines the in-focus slice: nvl (default), std, brenner
  --patches N          patches per image, central ones first (default 16)
  --fit-range UM       fit only slices with |z - z_focus| <= UM (default 3: the in/out boundary's neighbourhood;
                       the model's |d| saturates and its sign can flip further out)
  --min-abs-z UM       sign test uses slices with |z - z_focus| >= UM (default 1)
  --robust             Huber fit instead of least squares

Prints the report as JSON on stdout (both magnitude forms, a line through the signed output and a line in |d|,
with their held-out numbers under magnitude_forms; the one applied under magnitude and calibration.magnitude) and
the two forms in one line each on stderr; writes the calibrated bundle to --out.`;

export async function calibrateMain(argv: string[]): Promise<number> {
  let args;
  try {
    args = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        out: { type: 'string' },
        model: { type: 'string' },
        'pixel-size': { type: 'string' },
        measure: { type: 'string', default: 'nvl' },
        patches: { type: 'string', default: '16' },
        'fit-range': { type: 'string' },
        'min-abs-z': { type: 'string', default: '1' },
        robust: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    process.stderr.write(`focusd calibrate: ${(err as Error).message}\n${USAGE}\n`);
    return 64;
  }
  const v = args.values;
  if (v.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const stackDir = args.positionals[0];
  if (!stackDir || !v.out) {
    process.stderr.write(`focusd calibrate: STACK_DIR and --out are required\n${USAGE}\n`);
    return 64;
  }
  const measure = v.measure as FocusMeasure;
  if (!['nvl', 'std', 'brenner'].includes(measure)) {
    process.stderr.write(`focusd calibrate: --measure must be nvl, std or brenner, got "${v.measure}"\n`);
    return 64;
  }
  const num = (name: string, s: string | undefined): number | null => {
    if (s === undefined) return null;
    const x = Number(s);
    if (!Number.isFinite(x) || x <= 0) throw new Error(`--${name} must be a positive number, got "${s}"`);
    return x;
  };
  let numbers;
  try {
    numbers = {
      pixelSizeUm: num('pixel-size', v['pixel-size']),
      patches: num('patches', v.patches) ?? 16,
      fitRangeUm: num('fit-range', v['fit-range']),
      minAbsZUm: num('min-abs-z', v['min-abs-z']) ?? 1,
    };
  } catch (err) {
    process.stderr.write(`focusd calibrate: ${(err as Error).message}\n`);
    return 64;
  }
  try {
    const report = await calibrate({
      stackDir: resolve(stackDir),
      outDir: resolve(v.out),
      modelDir: resolve(v.model ?? DEFAULT_MODEL_DIR),
      measure,
      ...numbers,
      robust: v.robust ?? false,
    });
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    // both forms' held-out numbers for people (stdout stays one JSON document)
    process.stderr.write(magnitudeSummary(report as unknown as Parameters<typeof magnitudeSummary>[0]) + '\n');
    return 0;
  } catch (err) {
    process.stderr.write(`focusd calibrate: ${(err as Error).message}\n`);
    return 1;
  }
}
