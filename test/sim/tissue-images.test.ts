// Real-image scenes for the virtual scanner (sim/tissue-images.ts) and the tile sharpness the loop judges its moves
// by (models/cnn-scorer.ts tileSharpness). The images are made here: a procedural in-focus tile written as PNG.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { DefocusOptics } from '../../imaging/optics.js';
import { tileSharpness } from '../../models/cnn-scorer.js';
import { synthTile } from '../../sim/procedural.js';
import { TileRenderer } from '../../sim/render.js';
import { VirtualSlide } from '../../sim/slide.js';
import { cropScene, imageSceneSource, loadTissueImages, resolveTissueSpec } from '../../sim/tissue-images.js';
import { tempDir } from '../helpers/mqtt-side.js';

const optics = new DefocusOptics();

async function writeTissuePng(dir: string, name: string, seed: number, w = 700, h = 520): Promise<string> {
  const t = synthTile({ width: w, height: h, seed, kind: 'tissue', defocusUm: 0, noise: false }, optics);
  const f = join(dir, name);
  writeFileSync(f, await sharp(t.rgb, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer());
  return f;
}

describe('real-image scenes', () => {
  it('loads linear transmittance normalised to the image white; crops are seeded, differ per tile, keep the pixels', async () => {
    const dir = tempDir();
    const f = await writeTissuePng(dir, 'a.png', 3);
    const [img] = await loadTissueImages([f]);
    expect(img!.width).toBe(700);
    for (const p of img!.trans) {
      let max = 0;
      let min = 1;
      for (const v of p) {
        max = Math.max(max, v);
        min = Math.min(min, v);
      }
      expect(max).toBeLessThanOrEqual(1);
      expect(max).toBeGreaterThan(0.99); // the white is 1
      expect(min).toBeGreaterThanOrEqual(0);
      expect(min).toBeLessThan(0.6); // stained tissue absorbs
    }
    const a = cropScene([img!], { seed: 11, kind: 'tissue' }, 320, 200, 0.22);
    const b = cropScene([img!], { seed: 11, kind: 'tissue' }, 320, 200, 0.22);
    const c = cropScene([img!], { seed: 12, kind: 'tissue' }, 320, 200, 0.22);
    expect(Buffer.from(a.trans[1].buffer).equals(Buffer.from(b.trans[1].buffer))).toBe(true);
    expect(Buffer.from(a.trans[1].buffer).equals(Buffer.from(c.trans[1].buffer))).toBe(false);
    expect(a.truthTissueFraction).toBeGreaterThan(0.1);
    // every crop value is a pixel of the image (flips and rotations move pixels, never blend them)
    const values = new Set(img!.trans[0]);
    for (let i = 0; i < a.trans[0].length; i += 97) expect(values.has(a.trans[0][i]!)).toBe(true);
  });

  it('a renderer with the image source renders tissue tiles from the images and glass procedurally; defocus blurs them', async () => {
    const dir = tempDir();
    await writeTissuePng(dir, 'a.png', 4);
    await writeTissuePng(dir, 'b.png', 5);
    const images = await loadTissueImages(resolveTissueSpec(dir));
    expect(images.map((i) => i.name)).toEqual(['a.png', 'b.png']);
    const slide = new VirtualSlide({ seed: 9, cols: 4, rows: 3, width: 320, height: 200 });
    const r = new TileRenderer(optics, 12, imageSceneSource(images));
    // the tissue tile whose crop holds the most tissue (a crop may fall on the image's glass)
    const tissue = slide.tiles.filter((t) => t.kind === 'tissue').sort((a, b) => r.render(slide, b, 0).truthTissueFraction - r.render(slide, a, 0).truthTissueFraction)[0]!;
    expect(r.render(slide, tissue, 0).truthTissueFraction).toBeGreaterThan(0.5);
    const sharpAt = (z: number) => {
      const img = r.render(slide, tissue, z);
      return tileSharpness(img.rgb, img.width, img.height)!;
    };
    // the tile's sharpness falls with |defocus| on both sides: what the loop compares two acquisitions by
    const s0 = sharpAt(0);
    expect(sharpAt(1)).toBeLessThan(s0 / 1.15);
    expect(sharpAt(-1)).toBeLessThan(s0 / 1.15);
    expect(sharpAt(2.5)).toBeLessThan(sharpAt(1));
    expect(sharpAt(-2.5)).toBeLessThan(sharpAt(-1));
    const glass = slide.tiles.find((t) => t.kind === 'glass');
    if (glass) expect(r.render(slide, glass, 0).truthTissueFraction).toBeLessThan(0.1);
  });

  it('bad specs fail with a message naming what is missing', () => {
    const dir = tempDir();
    expect(() => resolveTissueSpec(join(dir, 'nope.png'))).toThrow(/nope\.png does not exist/);
    expect(() => resolveTissueSpec(dir)).toThrow(/no images .* in/);
    expect(() => resolveTissueSpec('heldout', dir)).toThrow(/held-out images not found under .*development data/);
    expect(() => resolveTissueSpec('')).toThrow(/no image named/);
  });

  it('corrupt and too-small images are refused before a scan, naming the file', async () => {
    const dir = tempDir();
    const bad = join(dir, 'bad.png');
    writeFileSync(bad, Buffer.from('\x89PNG\r\n\x1a\n not really a png'));
    await expect(loadTissueImages([bad])).rejects.toThrow(/cannot read .*bad\.png/);
    const small = await writeTissuePng(dir, 'small.png', 6, 300, 200);
    const images = await loadTissueImages([small]);
    expect(() => imageSceneSource(images, { width: 640, height: 320 })).toThrow(/small\.png \(300x200\) smaller than a tile of 640x320/);
    expect(() => imageSceneSource(images, { width: 200, height: 150 })).not.toThrow();
  });

  it('tileSharpness: procedural tile, sharper in focus than out on both sides; null without pixels', () => {
    const scene = synthTile({ width: 400, height: 300, seed: 8, kind: 'tissue', defocusUm: 0 }, optics);
    const s0 = tileSharpness(scene.rgb, 400, 300)!;
    for (const z of [-1.5, 1.5]) {
      const t = synthTile({ width: 400, height: 300, seed: 8, kind: 'tissue', defocusUm: z }, optics);
      expect(tileSharpness(t.rgb, 400, 300)!).toBeLessThan(s0 / 1.15);
    }
    expect(tileSharpness(new Uint8Array(0), 0, 0)).toBeNull();
    // a single row has no vertical pairs but horizontal ones; a 1x1 tile has none
    expect(tileSharpness(new Uint8Array(3), 1, 1)).toBeNull();
  });
});
