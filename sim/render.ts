/**
 * Renders a virtual tile acquisition: the tile's procedural tissue (sim/procedural.ts) at the TRUE defocus
 * through the instrument's optics. Rendering is the simulator's main cost (a few hundred ms for 640x320 on a
 * busy core), so both halves are cached: a tile's scene (independent of z) and its image at a defocus (the scene
 * and the sensor noise are seeded by the tile, so the same tile at the same defocus is the same image: the scan
 * without feedback and the first pass of the scan with it share them). Slides are scanned one after the other,
 * so caches of about one slide suffice.
 */
import type { DefocusOptics } from '../imaging/optics.js';
import { imageScene, synthScene, type SynthScene, type SynthTile } from './procedural.js';
import type { SimTile, VirtualSlide } from './slide.js';

/**
 * Defocus is rendered on a 0.05 µm grid: far below what any scorer resolves (the model's MAE is ~0.4 µm), and it
 * lets images and the optics' blur kernels be reused. The truth the simulator judges by stays exact.
 */
export const RENDER_STEP_UM = 0.05;

class Lru<V> {
  private readonly m = new Map<string, V>();
  constructor(private readonly max: number) {}
  get(k: string): V | undefined {
    const v = this.m.get(k);
    if (v !== undefined) {
      this.m.delete(k);
      this.m.set(k, v);
    }
    return v;
  }
  set(k: string, v: V): void {
    this.m.set(k, v);
    if (this.m.size > this.max) this.m.delete(this.m.keys().next().value!);
  }
}

/** Where a tile's scene comes from when not procedural (sim/tissue-images.ts); null: procedural. */
export type SceneSource = (slide: VirtualSlide, tile: SimTile) => SynthScene | null;

export class TileRenderer {
  private readonly scenes: Lru<SynthScene>;
  private readonly images: Lru<SynthTile>;
  renders = 0;
  hits = 0;
  renderMs = 0;

  /** `tilesPerSlide` sizes the caches (one slide's scenes, two images per tile). */
  constructor(
    private readonly optics: DefocusOptics,
    tilesPerSlide = 48,
    private readonly sceneSource?: SceneSource,
  ) {
    this.scenes = new Lru(tilesPerSlide + 8);
    this.images = new Lru(2 * tilesPerSlide + 8);
  }

  render(slide: VirtualSlide, tile: SimTile, defocusUm: number): SynthTile {
    const q = Math.round(defocusUm / RENDER_STEP_UM) * RENDER_STEP_UM;
    const sceneKey = `${slide.seed}:${tile.index}:${slide.width}x${slide.height}`;
    const key = `${sceneKey}:${q.toFixed(2)}`;
    const hit = this.images.get(key);
    if (hit) {
      this.hits++;
      return hit;
    }
    const t0 = performance.now();
    let scene = this.scenes.get(sceneKey);
    if (!scene) {
      scene = this.sceneSource?.(slide, tile) ?? synthScene({ width: slide.width, height: slide.height, seed: tile.seed, kind: tile.kind, pixelSizeUm: slide.pixelSizeUm });
      this.scenes.set(sceneKey, scene);
    }
    const img = imageScene(scene, { defocusUm: q }, this.optics);
    this.renderMs += performance.now() - t0;
    this.renders++;
    this.images.set(key, img);
    return img;
  }
}
