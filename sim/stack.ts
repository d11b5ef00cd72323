/**
 * A focus stack taken on a virtual instrument, in the format `focusd calibrate` reads (models/calibrate-stack.ts):
 * PNG slices of several lateral positions of procedural tissue at known z (the true focus of every position is
 * z = 0) and manifest.csv with file,z_um,ix,iy. The tissue is drawn from its own seed stream, so a stack never shows
 * the tiles of the slides a simulation scans (what a lab does: calibrate on one slide, scan others).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { DefocusOptics } from '../imaging/optics.js';
import { instrumentOptics, type InstrumentName } from './instruments.js';
import { encodePng, imageScene, rng32, synthScene, type SynthScene } from './procedural.js';

export interface SimStackOptions {
  instrument: InstrumentName;
  dir: string;
  /** tissue seed (default 1); the positions' scenes are drawn from it on a stream of their own. */
  seed?: number;
  /** lateral positions (default 4). */
  positions?: number;
  /** z range and step, µm (default −6..+6 in 0.5 µm). */
  zFromUm?: number;
  zToUm?: number;
  stepUm?: number;
  /** slice size in pixels (default 640 x 320, two model patches) and pixel size (default 0.22 µm, the model's). */
  width?: number;
  height?: number;
  pixelSizeUm?: number;
  /** the instrument's optics (default instrumentOptics(instrument)); pass one to share its kernel cache. */
  optics?: DefocusOptics;
  /**
   * a position's in-focus scene from its seed (default: procedural tissue); e.g. crops of real images
   * (sim/tissue-images.ts cropScene) when the slides are scanned with --tissue.
   */
  scene?: (seed: number, width: number, height: number, pixelSizeUm: number) => SynthScene;
  /** what the scenes are, for stack.json (default procedural). */
  tissue?: string;
}

export interface SimStack {
  dir: string;
  instrument: InstrumentName;
  seed: number;
  positions: Array<{ ix: number; iy: number; scene_seed: number }>;
  tissue: string;
  z_um: number[];
  pixel_size_um: number;
  size: { width: number; height: number };
  images: number;
}

/** File name of a slice: `p<ix>_z±NNN.NNNum.png` (the z is in the name too, for a reader without the manifest). */
export function stackFileName(ix: number, z: number): string {
  return `p${ix}_z${z < 0 ? '-' : '+'}${Math.abs(z).toFixed(3).padStart(7, '0')}um.png`;
}

/** Renders and writes the stack; returns what it wrote (also in `<dir>/stack.json`). */
export async function writeSimStack(o: SimStackOptions): Promise<SimStack> {
  const seed = o.seed ?? 1;
  const n = o.positions ?? 4;
  const from = o.zFromUm ?? -6;
  const to = o.zToUm ?? 6;
  const step = o.stepUm ?? 0.5;
  const width = o.width ?? 640;
  const height = o.height ?? 320;
  const px = o.pixelSizeUm ?? 0.22;
  if (!(step > 0) || !(to > from)) throw new Error(`writeSimStack: z from ${from} to ${to} in steps of ${step} is empty`);
  const optics = o.optics ?? instrumentOptics(o.instrument);
  const zs = Array.from({ length: Math.floor((to - from) / step + 1e-9) + 1 }, (_, i) => Math.round((from + i * step) * 1000) / 1000);
  // a stream apart from the slides' tile seeds (seed·100003 + index)
  const rnd = rng32((seed * 2_654_435_761) ^ 0x5eed57ac);
  const positions = Array.from({ length: n }, (_, ix) => ({ ix, iy: 0, scene_seed: Math.floor(rnd() * 2 ** 32) >>> 0 }));
  await mkdir(o.dir, { recursive: true });
  const rows = ['file,z_um,ix,iy'];
  for (const p of positions) {
    const scene = o.scene ? o.scene(p.scene_seed, width, height, px) : synthScene({ width, height, seed: p.scene_seed, kind: 'tissue', pixelSizeUm: px });
    for (const z of zs) {
      const file = stackFileName(p.ix, z);
      await writeFile(join(o.dir, file), await encodePng(imageScene(scene, { defocusUm: z }, optics)));
      rows.push(`${file},${z},${p.ix},${p.iy}`);
    }
  }
  await writeFile(join(o.dir, 'manifest.csv'), rows.join('\n') + '\n');
  const stack: SimStack = { dir: o.dir, instrument: o.instrument, seed, positions, tissue: o.tissue ?? 'procedural', z_um: zs, pixel_size_um: px, size: { width, height }, images: rows.length - 1 };
  await writeFile(join(o.dir, 'stack.json'), JSON.stringify(stack, null, 2) + '\n');
  return stack;
}
