// focusd calibrate STACK_DIR --out DIR [--model DIR]: fit the model to one instrument from a focus stack.
// Reads images whose z is in the file name (..._z+006.515um.png) or in STACK_DIR/manifest.csv (file,z_um[,ix,iy]),
// finds the in-focus slice of each lateral position (std as published, and normalised variance of Laplacian),
// predicts with the bundle (onnxruntime-node, the default engine), decides whether the sign is
// recoverable, fits output → µm in two forms (a line through the signed output, a line in |d|; models/calibration.ts
// applies the better one on held-out data), prints a JSON report and writes the calibrated bundle.
import { existsSync } from 'node:fs';
import { median } from '../core/stats.js';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { basename, extname, join } from 'node:path';
import ort from 'onnxruntime-node';
import sharp from 'sharp';
import { loadBundle } from './bundle.js';
import { type CalibrationSample, type FocusMeasure, type MagnitudeValidation, signByAbsZ, findInFocus, fitCalibration, type GrayImage, spearman, toGray, writeCalibratedBundle } from './calibration.js';
import type { ModelManifest } from './manifest.js';


const IMAGE_RE = /\.(png|jpe?g|tiff?|webp)$/i;
const Z_RE = /_z([+-]?\d+(?:\.\d+)?)um/i;

export interface StackImage {
  file: string;
  z_um: number;
  position: string;
}

/**
 * `focusd calibrate --fit-range` unless told otherwise: slices within 3 µm of focus, the in/out boundary's
 * neighbourhood. Beyond it the shipped model's |d| saturates and its sign flips on some optics (below about −3.5 µm
 * on the simulator's matching instrument), and a line through ±8 µm fits those instead of the ±1 µm that decide
 * (measured on a simulated stack: held-out MAE 2.76 µm over the trained range, 0.70 µm within 3 µm).
 */
export const DEFAULT_FIT_RANGE_UM = 3;

/** Fewest slices at distinct z a lateral position needs to find its in-focus slice and fit around it. */
export const MIN_SLICES_PER_POSITION = 3;

/**
 * Lists the stack: manifest.csv (file, z_um, optional ix/iy) if present, else z parsed from file names. A lateral
 * position is ix/iy when the manifest has them, else the file name without its _z…um part; a stack in which no
 * position has MIN_SLICES_PER_POSITION slices is refused with what it needs.
 */
export async function listStack(dir: string): Promise<StackImage[]> {
  return checkPositions(dir, await readStack(dir));
}

function checkPositions(dir: string, images: StackImage[]): StackImage[] {
  const zs = new Map<string, Set<number>>();
  for (const im of images) zs.set(im.position, (zs.get(im.position) ?? new Set()).add(im.z_um));
  const usable = [...zs.values()].filter((s) => s.size >= MIN_SLICES_PER_POSITION).length;
  if (usable > 0) return images;
  throw new Error(
    `${dir}: no lateral position has ${MIN_SLICES_PER_POSITION} or more slices at different z (${images.length} images in ${zs.size} positions). ` +
      'Slices of one position are grouped by the ix,iy columns of manifest.csv, or, without them, by the file name with its _z…um part removed ' +
      '(e.g. pos1_z-002.0um.png, pos1_z+000.0um.png, …). Add ix,iy columns to manifest.csv (the same values for every slice of a position) or name the files that way.',
  );
}

async function readStack(dir: string): Promise<StackImage[]> {
  if (!existsSync(dir)) throw new Error(`${dir}: no such directory (STACK_DIR: the folder of the stack's images)`);
  const csv = join(dir, 'manifest.csv');
  if (existsSync(csv)) {
    const lines = (await readFile(csv, 'utf8')).split(/\r?\n/).filter((l) => l.trim());
    const head = lines[0]!.split(',').map((s) => s.trim());
    const col = (n: string) => head.indexOf(n);
    if (col('file') < 0 || col('z_um') < 0) throw new Error(`${csv}: needs columns file and z_um (has ${head.join(',')})`);
    return lines.slice(1).map((l, i) => {
      const c = l.split(',');
      const z = Number(c[col('z_um')]);
      if (!Number.isFinite(z)) throw new Error(`${csv}: line ${i + 2}: z_um "${c[col('z_um')]}" is not a number`);
      const file = c[col('file')]!.trim();
      const position = col('ix') >= 0 && col('iy') >= 0 ? `ix${c[col('ix')]}_iy${c[col('iy')]}` : file.replace(Z_RE, '').replace(IMAGE_RE, '');
      return { file: join(dir, file), z_um: z, position };
    });
  }
  const out: StackImage[] = [];
  for (const f of (await readdir(dir)).sort()) {
    if (!IMAGE_RE.test(f)) continue;
    const m = Z_RE.exec(f);
    if (!m) continue;
    out.push({ file: join(dir, f), z_um: Number(m[1]), position: f.replace(Z_RE, '').replace(IMAGE_RE, '') });
  }
  if (out.length === 0) throw new Error(`${dir}: no images with z in the name (e.g. tile_z+006.515um.png) and no manifest.csv`);
  return out;
}

async function pixelSizeOf(file: string, widthPx: number, override: number | null, modelPx: number): Promise<{ um: number; from: string }> {
  if (override) return { um: override, from: '--pixel-size' };
  const js = file.slice(0, -extname(file).length) + '.json';
  if (existsSync(js)) {
    const meta = JSON.parse(await readFile(js, 'utf8')) as { imageWidth?: number };
    if (typeof meta.imageWidth === 'number' && meta.imageWidth > 0) return { um: meta.imageWidth / widthPx, from: basename(js) };
  }
  return { um: modelPx, from: 'model pixel size (assumed)' };
}

/** Normalised NCHW/NHWC patches from an 8-bit RGB image already at the model's pixel size, central ones first. */
export function extractPatches(rgb: Uint8Array, w: number, h: number, m: ModelManifest, maxPatches: number): { data: Float32Array; n: number } {
  const [ph, pw] = m.input.size;
  const rows = Math.floor(h / ph), cols = Math.floor(w / pw);
  if (rows < 1 || cols < 1) throw new Error(`image ${w}x${h} is smaller than one ${pw}x${ph} patch`);
  const oy = Math.floor((h - rows * ph) / 2), ox = Math.floor((w - cols * pw) / 2);
  const cells: [number, number][] = [];
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) cells.push([r, c]);
  cells.sort((a, b) => Math.hypot(a[0] - (rows - 1) / 2, a[1] - (cols - 1) / 2) - Math.hypot(b[0] - (rows - 1) / 2, b[1] - (cols - 1) / 2));
  const chosen = cells.slice(0, Math.max(1, maxPatches));
  const { scale, mean, std } = m.input.normalisation;
  const per = 3 * ph * pw;
  const data = new Float32Array(chosen.length * per);
  chosen.forEach(([r, c], k) => {
    for (let y = 0; y < ph; y++) {
      for (let x = 0; x < pw; x++) {
        const p = ((oy + r * ph + y) * w + (ox + c * pw + x)) * 3;
        for (let ch = 0; ch < 3; ch++) {
          const v = (rgb[p + ch]! * scale - mean[ch]!) / std[ch]!;
          const idx = m.input.layout === 'NCHW' ? k * per + ch * ph * pw + y * pw + x : k * per + (y * pw + x) * 3 + ch;
          data[idx] = v;
        }
      }
    }
  });
  return { data, n: chosen.length };
}


/** Both magnitude forms' held-out numbers, one line each, and which one was applied (for people; the JSON has it all). */
export function magnitudeSummary(r: { magnitude_forms: { signed: MagnitudeValidation; abs: MagnitudeValidation | null }; magnitude_choice: string; calibration: ModelManifest['calibration'] }): string {
  const n = (v: number | null | undefined) => (v === null || v === undefined ? '–' : v.toFixed(3));
  const line = (v: MagnitudeValidation) =>
    `  ${v.form.padEnd(6)} fitted slope ${n(v.fitted.slope)} intercept ${n(v.fitted.intercept)}; held-out (${v.method}, ${v.heldout.samples} slices): ` +
    `MAE ${n(v.heldout.mae_um.identity)} → ${n(v.heldout.mae_um.fit)} µm, boundary error ${n(v.heldout.boundary.identity.error_um)} → ${n(v.heldout.boundary.fit.error_um)} µm; ` +
    `${v.applied ? 'passes' : 'fails'}: ${v.reason}`;
  const c = r.calibration;
  return [
    'magnitude forms (identity → fit):',
    line(r.magnitude_forms.signed),
    r.magnitude_forms.abs ? line(r.magnitude_forms.abs) : '  abs    – (sign unrecoverable: the signed form is a line in |d| already)',
    `applied: sign ${c.sign}, magnitude ${c.magnitude ?? 'signed'}, slope ${n(c.slope)}, intercept ${n(c.intercept)} (${r.magnitude_choice})`,
    c.source.split('; ').find((x) => x.startsWith('guard band')) ?? `guard band ${n(c.guard_um ?? 0)} µm`,
  ].join('\n');
}

export interface CalibrateOptions {
  stackDir: string;
  outDir: string;
  modelDir: string;
  pixelSizeUm: number | null;
  measure: FocusMeasure;
  patches: number;
  fitRangeUm: number | null;
  minAbsZUm: number;
  robust: boolean;
}

export async function calibrate(o: CalibrateOptions): Promise<Record<string, unknown>> {
  const { manifest, modelPath } = await loadBundle(o.modelDir);
  if (manifest.format !== 'onnx') throw new Error(`calibrate runs ONNX bundles (onnxruntime-node); ${o.modelDir} is ${manifest.format}`);
  const stack = await listStack(o.stackDir);
  const session = await ort.InferenceSession.create(modelPath, { graphOptimizationLevel: 'all' });
  const [ph, pw] = manifest.input.size;
  const rows: { img: StackImage; gray: GrayImage; abs_um: number; sign_logit: number; pixel_um: number; pixel_from: string; patches: number }[] = [];
  for (const img of stack) {
    const rowOf = async () => {
      const meta = await sharp(img.file).metadata();
      if (!meta.width || !meta.height) throw new Error(`${img.file}: cannot read image size`);
      const px = await pixelSizeOf(img.file, meta.width, o.pixelSizeUm, manifest.input.pixel_size_um);
      const f = px.um / manifest.input.pixel_size_um;
      const base = await sharp(img.file).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
      const gray = toGray(base.data, base.info.width, base.info.height, base.info.channels);
      const W = Math.round(meta.width * f), H = Math.round(meta.height * f);
      const scaled = await sharp(img.file).removeAlpha().toColourspace('srgb').resize(W, H, { kernel: 'lanczos3' }).raw().toBuffer({ resolveWithObject: true });
      if (scaled.info.channels !== 3) throw new Error(`${img.file}: expected RGB, got ${scaled.info.channels} channels`);
      const { data, n } = extractPatches(new Uint8Array(scaled.data.buffer, scaled.data.byteOffset, scaled.data.length), scaled.info.width, scaled.info.height, manifest, o.patches);
      const shape = manifest.input.layout === 'NCHW' ? [n, 3, ph, pw] : [n, ph, pw, 3];
      const out = await session.run({ [manifest.input.name]: new ort.Tensor('float32', data, shape) });
      const a = Array.from(out[manifest.outputs.abs_um]!.data as Float32Array);
      const s = Array.from(out[manifest.outputs.sign_logit]!.data as Float32Array);
      rows.push({ img, gray, abs_um: median(a), sign_logit: median(s), pixel_um: px.um, pixel_from: px.from, patches: n });
    };
    try {
      await rowOf();
    } catch (err) {
      // name the slice: a stack is hundreds of files
      throw new Error(`${img.file}: ${(err as Error).message.replace(`${img.file}: `, '')}`);
    }
  }
  await session.release();
  // in-focus slice per lateral position, with both measures
  const positions = [...new Set(rows.map((r) => r.img.position))];
  const focus: Record<string, { z_focus_um: number; z_focus_std_um: number; z_focus_nvl_um: number; slices: number }> = {};
  for (const p of positions) {
    const sl = rows.filter((r) => r.img.position === p).map((r) => ({ z_um: r.img.z_um, image: r.gray }));
    const byStd = findInFocus(sl, 'std');
    const byNvl = findInFocus(sl, 'nvl');
    const chosen = o.measure === 'std' ? byStd : o.measure === 'nvl' ? byNvl : findInFocus(sl, o.measure);
    focus[p] = { z_focus_um: chosen.z_um, z_focus_std_um: byStd.z_um, z_focus_nvl_um: byNvl.z_um, slices: sl.length };
  }
  const fitRange = o.fitRangeUm ?? DEFAULT_FIT_RANGE_UM;
  const all: CalibrationSample[] = rows.map((r) => ({ z_rel_um: r.img.z_um - focus[r.img.position]!.z_focus_um, abs_um: r.abs_um, sign_logit: r.sign_logit, position: r.img.position }));
  const inRange = all.filter((s) => Math.abs(s.z_rel_um) <= fitRange);
  const source = `focus stack ${basename(o.stackDir)} (${rows.length} images, ${positions.length} positions, in-focus by ${o.measure}, |z| <= ${fitRange} µm)`;
  const fit = fitCalibration(manifest, inRange, { robust: o.robust, minAbsZ: o.minAbsZUm, source });
  const report = {
    stack: o.stackDir,
    model: { dir: o.modelDir, name: manifest.name, version: manifest.version, architecture: manifest.architecture, sha256: manifest.sha256 },
    images: rows.length,
    patches_per_image: rows[0]?.patches,
    pixel_size_um: rows[0]?.pixel_um,
    pixel_size_from: rows[0]?.pixel_from,
    in_focus: focus,
    in_focus_measures_agree: Object.values(focus).filter((f) => f.z_focus_std_um === f.z_focus_nvl_um).length,
    fit_range_um: fitRange,
    fit_samples: inRange.length,
    calibration: fit.calibration,
    // the magnitude fit and whether it helped on positions/slices it was not fitted to (applied only then)
    magnitude: fit.magnitude,
    // both forms (line through the signed output, line in |d|) with their held-out numbers, and which was applied
    magnitude_forms: fit.magnitude_forms,
    magnitude_choice: fit.magnitude_choice,
    fit: fit.fit,
    fit_abs: fit.fit_abs,
    sign: fit.sign,
    // the model's sign agreement per 1 µm band of |z|, every slice (the decision above is one number for the fit range)
    sign_by_abs_z: signByAbsZ(all),
    spearman_abs_in_range: { before: fit.spearman_abs_before, after: fit.spearman_abs_after },
    spearman_abs_all: spearman(all.map((s) => s.abs_um), all.map((s) => Math.abs(s.z_rel_um))),
    mae_um_in_range: { before: fit.mae_um_before, after: fit.mae_um_after },
    within_1um_in_range: { before: fit.within_1um_before, after: fit.within_1um_after },
    slices: rows.map((r, i) => ({ file: basename(r.img.file), z_um: r.img.z_um, z_rel_um: all[i]!.z_rel_um, abs_um: r.abs_um, sign_logit: r.sign_logit })),
  };
  await mkdir(o.outDir, { recursive: true });
  const { slices: _slices, ...metrics } = report;
  await writeCalibratedBundle(o.modelDir, o.outDir, fit.calibration, metrics);
  await writeFile(join(o.outDir, 'calibration-report.json'), JSON.stringify(report, null, 2) + '\n');
  return { ...report, out: o.outDir };
}
