/**
 * Scenes from real in-focus histology images instead of procedural tissue: the virtual scanner then scans the
 * texture domain the defocus model was built for, still blurred by the instrument's optics (imaging/optics.ts)
 * at the true defocus and still through the simulator's own sensor model. Procedural tiles stay the default (the
 * repository ships no images); this is for measuring the loop where images are at hand, e.g. the development
 * data's held-out sources (`focusd simulate --tissue heldout`, `npm run bench -- --loop --loop-tissue heldout`).
 *
 * An 8-bit sRGB image is turned into linear transmittance per channel (the sRGB transfer function undone, divided
 * by the image's white: the 99.5th percentile of each channel). A tile's scene is a crop of one image, chosen with
 * an orientation (8 flips/rotations) and an offset from the tile's seed, so every acquisition of a tile shows the
 * same tissue and the same seed gives the same slide.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import sharp, { type OutputInfo } from 'sharp';
import { rng32, type SynthScene } from './procedural.js';
import type { SimTile, VirtualSlide } from './slide.js';

export interface TissueImage {
  name: string;
  width: number;
  height: number;
  /** linear transmittance per channel, row-major, 0..1. */
  trans: [Float32Array, Float32Array, Float32Array];
}

/**
 * The held-out images of the training code (models/training/synth.py SOURCES, splits holdout_source and
 * holdout_stain): tissue sources and stains the shipped model never saw, relative to the development data's
 * infocus/ folder.
 */
export const HELD_OUT_IMAGES = [
  'henorm_python/example1.png',
  'henorm_python/example2.png',
  'kidney_multistain_nisar/orig_patch_stain_32.png',
  'kidney_multistain_nisar/orig_patch_stain_13.png',
  'kidney_multistain_nisar/orig_patch_stain_40.png',
] as const;

/** Where the development data's in-focus images live when a checkout sits beside it (never in the repository). */
export const DEV_INFOCUS_DIR = '../shared/data/infocus';

const IMAGE_EXT = /\.(png|jpe?g|tiff?|webp)$/i;

/**
 * Image files named by `spec`: `heldout` (the held-out list under DEV_INFOCUS_DIR, or under `root`), or a comma
 * separated list of files and folders (folders: their images, not recursive).
 */
export function resolveTissueSpec(spec: string, root = DEV_INFOCUS_DIR): string[] {
  if (spec === 'heldout') {
    const files = HELD_OUT_IMAGES.map((f) => resolve(root, f));
    const missing = files.filter((f) => !existsSync(f));
    if (missing.length) throw new Error(`--tissue heldout: ${missing.length} of ${files.length} held-out images not found under ${resolve(root)} (first: ${missing[0]}); they come with the development data, not with focusd`);
    return files;
  }
  const out: string[] = [];
  for (const part of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const p = resolve(part);
    if (!existsSync(p)) throw new Error(`--tissue: ${p} does not exist`);
    if (statSync(p).isDirectory()) {
      const imgs = readdirSync(p).filter((f) => IMAGE_EXT.test(f)).sort().map((f) => join(p, f));
      if (!imgs.length) throw new Error(`--tissue: no images (png, jpg, tif, webp) in ${p}`);
      out.push(...imgs);
    } else out.push(p);
  }
  if (!out.length) throw new Error('--tissue: no image named');
  return out;
}

const SRGB_TO_LINEAR = Float32Array.from({ length: 256 }, (_, v) => {
  const c = v / 255;
  return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
});

/** Loads images as linear transmittance (see the file comment). */
export async function loadTissueImages(files: string[]): Promise<TissueImage[]> {
  const out: TissueImage[] = [];
  for (const f of files) {
    let data: Buffer;
    let info: OutputInfo;
    try {
      ({ data, info } = await sharp(f).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true }));
    } catch (err) {
      throw new Error(`--tissue: cannot read ${f}: ${(err as Error).message}`);
    }
    const n = info.width * info.height;
    const ch = info.channels;
    const trans: [Float32Array, Float32Array, Float32Array] = [new Float32Array(n), new Float32Array(n), new Float32Array(n)];
    for (let c = 0; c < 3; c++) {
      const plane = trans[c]!;
      const hist = new Uint32Array(256);
      for (let i = 0; i < n; i++) hist[data[i * ch + (ch >= 3 ? c : 0)]!]!++;
      // white: the 99.5th percentile (a few saturated pixels must not set it)
      let acc = 0;
      let white = 255;
      for (let v = 255; v >= 0; v--) {
        acc += hist[v]!;
        if (acc >= 0.005 * n) {
          white = v;
          break;
        }
      }
      const w = SRGB_TO_LINEAR[Math.max(1, white)]!;
      for (let i = 0; i < n; i++) plane[i] = Math.min(1, SRGB_TO_LINEAR[data[i * ch + (ch >= 3 ? c : 0)]!]! / w);
    }
    out.push({ name: basename(f), width: info.width, height: info.height, trans });
  }
  return out;
}

/** A tile's scene: a crop of one image, orientation and offset drawn from the tile's seed. */
export function cropScene(images: TissueImage[], tile: Pick<SimTile, 'seed' | 'kind'>, width: number, height: number, pixelSizeUm: number): SynthScene {
  const rnd = rng32((tile.seed * 2654435761) >>> 0);
  const img = images[Math.floor(rnd() * images.length)]!;
  const orient = Math.floor(rnd() * 8);
  const swap = orient >= 4; // transposed: the crop is taken from a rotated image
  const iw = swap ? img.height : img.width;
  const ih = swap ? img.width : img.height;
  if (iw < width || ih < height) throw new Error(`--tissue: ${img.name} (${img.width}x${img.height}) is smaller than a tile (${width}x${height})`);
  const ox = Math.floor(rnd() * (iw - width + 1));
  const oy = Math.floor(rnd() * (ih - height + 1));
  const flipX = (orient & 1) === 1;
  const flipY = (orient & 2) === 2;
  const n = width * height;
  const trans: [Float32Array, Float32Array, Float32Array] = [new Float32Array(n), new Float32Array(n), new Float32Array(n)];
  let tissue = 0;
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      let u = ox + (flipX ? width - 1 - x : x);
      let v = oy + (flipY ? height - 1 - y : y);
      if (swap) [u, v] = [v, u];
      const src = v * img.width + u;
      const i = y * width + x;
      let mean = 0;
      for (let c = 0; c < 3; c++) {
        const t = img.trans[c]![src]!;
        trans[c]![i] = t;
        mean += t / 3;
      }
      if (mean < 0.85) tissue++;
    }
  return { width, height, seed: tile.seed, kind: tile.kind, pixelSizeUm, trans, truthTissueFraction: tissue / n };
}

/** The scenes of a focus stack's positions from the images (crops by the position's seed): sim-calibrate's `scene`. */
export function stackSceneSource(images: TissueImage[]): (seed: number, width: number, height: number, pixelSizeUm: number) => SynthScene {
  return (seed, width, height, pixelSizeUm) => cropScene(images, { seed, kind: 'tissue' }, width, height, pixelSizeUm);
}

/**
 * A scene source for TileRenderer: tissue tiles from the images, glass and dust stay procedural. With the tile size,
 * images too small for a tile are refused here, before a scan starts (a crop may be rotated: both sides must fit).
 */
export function imageSceneSource(images: TissueImage[], tile?: { width: number; height: number }): (slide: VirtualSlide, tile: SimTile) => SynthScene | null {
  if (!images.length) throw new Error('imageSceneSource: no images');
  if (tile) {
    const small = images.filter((i) => Math.min(i.width, i.height) < Math.max(tile.width, tile.height));
    if (small.length) throw new Error(`--tissue: ${small.map((i) => `${i.name} (${i.width}x${i.height})`).join(', ')} smaller than a tile of ${tile.width}x${tile.height} in some orientation; use larger images or --width/--height`);
  }
  return (slide, tile) => (tile.kind === 'tissue' || tile.kind === 'pale' ? cropScene(images, tile, slide.width, slide.height, slide.pixelSizeUm) : null);
}
