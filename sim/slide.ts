/**
 * A virtual slide: a grid of tiles of procedural tissue (sim/procedural.ts) and the TRUE best-focus surface the
 * scanner does not know. The scanner plans every tile at one flat z (a focus map taken once at the slide centre);
 * the truth differs from that plan by
 *   - a tilt (the slide does not lie flat),
 *   - a curvature (a warped section or cover glass),
 *   - a slow drift (thermal, stage creep) that starts partway into the scan and grows with every acquisition,
 *   - a few isolated bumps of about ±3 µm (folds, debris under the section) that stay for a retake.
 * Everything is drawn from one seed: the same seed gives the same slide.
 */
import { rng32, type SynthKind } from './procedural.js';

export interface SlideOptions {
  seed: number;
  id?: string;
  cols?: number;
  rows?: number;
  /** tile size in pixels (the model reads 320x320 patches at 0.22 µm/px). */
  width?: number;
  height?: number;
  pixelSizeUm?: number;
  /** the scanner's planned focus (µm). */
  z0?: number;
}

export interface SimTile {
  index: number;
  row: number;
  col: number;
  /** stage position of the tile centre, µm. */
  x: number;
  y: number;
  kind: SynthKind;
  /** seed of the tile's scene: every acquisition of the tile shows the same tissue. */
  seed: number;
  /** local height of the section at this tile (isolated blur), µm; 0 for most tiles. */
  bumpUm: number;
}

/** The focus surface's parameters (reported with each slide so a run can be reproduced and explained). */
export interface SurfaceParams {
  z0: number;
  /** µm of best-focus z per mm of stage travel. */
  tiltUmPerMm: { x: number; y: number };
  /** best-focus change from the centre to the far corner, µm (zero mean over the slide). */
  curvatureUm: number;
  /** drift: starts after this many acquisitions, then grows by rate µm per acquisition. */
  drift: { startAcquisition: number; rateUmPerAcquisition: number; atEndOfFirstPassUm: number };
  bumps: Array<{ index: number; um: number }>;
}

export class VirtualSlide {
  readonly id: string;
  readonly seed: number;
  readonly cols: number;
  readonly rows: number;
  readonly width: number;
  readonly height: number;
  readonly pixelSizeUm: number;
  readonly tiles: SimTile[];
  readonly surface: SurfaceParams;
  private readonly cx: number;
  private readonly cy: number;
  private readonly rMax2: number;

  constructor(o: SlideOptions) {
    this.seed = o.seed;
    this.id = o.id ?? `sim-slide-${o.seed}`;
    this.cols = o.cols ?? 8;
    this.rows = o.rows ?? 6;
    this.width = o.width ?? 640;
    this.height = o.height ?? 320;
    this.pixelSizeUm = o.pixelSizeUm ?? 0.22;
    const rnd = rng32(o.seed * 7919 + 17);
    const tw = this.width * this.pixelSizeUm;
    const th = this.height * this.pixelSizeUm;
    const x0 = 10_000 + Math.round(rnd() * 20_000);
    const y0 = 10_000 + Math.round(rnd() * 20_000);
    this.cx = x0 + (this.cols * tw) / 2;
    this.cy = y0 + (this.rows * th) / 2;
    this.rMax2 = ((this.cols * tw) / 2) ** 2 + ((this.rows * th) / 2) ** 2;
    const n = this.cols * this.rows;
    const sign = () => (rnd() < 0.5 ? -1 : 1);

    // tissue: an elliptical section filling most of the grid, glass (sometimes with dust) at the corners
    this.tiles = [];
    const ea = this.cols / 2 + 0.3;
    const eb = this.rows / 2 + 0.3;
    for (let row = 0; row < this.rows; row++)
      for (let col = 0; col < this.cols; col++) {
        const e = ((col + 0.5 - this.cols / 2) / ea) ** 2 + ((row + 0.5 - this.rows / 2) / eb) ** 2;
        const r = rnd();
        const kind: SynthKind = e > 1 ? (r < 0.3 ? 'dust' : 'glass') : r < 0.2 ? 'pale' : 'tissue';
        this.tiles.push({
          index: row * this.cols + col,
          row,
          col,
          x: x0 + (col + 0.5) * tw,
          y: y0 + (row + 0.5) * th,
          kind,
          seed: (o.seed * 100_003 + row * this.cols + col) >>> 0,
          bumpUm: 0,
        });
      }

    // isolated bumps on three tissue tiles, not the first ones of the scan and never side by side
    const bumps: SurfaceParams['bumps'] = [];
    const candidates = this.tiles.filter((t) => isTissueKind(t.kind) && t.index >= 3);
    for (let tries = 0; bumps.length < 3 && tries < 200; tries++) {
      const t = candidates[Math.floor(rnd() * candidates.length)];
      if (!t || bumps.some((b) => Math.abs(b.index - t.index) <= 1 || Math.abs(b.index - t.index) === this.cols)) continue;
      t.bumpUm = round3(sign() * (2.5 + rnd()));
      bumps.push({ index: t.index, um: t.bumpUm });
    }
    const startAcquisition = Math.round(n * (0.35 + rnd() * 0.15));
    // a physical rate (µm per acquisition, i.e. per unit of scan time), not one scaled to the slide: on 8x6 tiles
    // it reaches 2.5-3.5 µm by the end of the first pass; retakes take time, so the drift goes on during them
    const rate = sign() * (0.09 + rnd() * 0.04);
    this.surface = {
      z0: o.z0 ?? 1500,
      tiltUmPerMm: { x: round3(sign() * (1.5 + rnd())), y: round3(sign() * (0.5 + rnd())) },
      curvatureUm: round3(sign() * (0.5 + rnd() * 0.5)),
      drift: { startAcquisition, rateUmPerAcquisition: rate, atEndOfFirstPassUm: round3(rate * (n - startAcquisition)) },
      bumps,
    };
  }

  /** Best focus of the smooth surface (no bumps) at a stage position, after `t` acquisitions of this slide. */
  smoothFocus(x: number, y: number, t: number): number {
    const s = this.surface;
    const dx = x - this.cx;
    const dy = y - this.cy;
    const tilt = (s.tiltUmPerMm.x * dx + s.tiltUmPerMm.y * dy) / 1000;
    // zero mean over the slide, `curvatureUm` higher at the far corner than at the centre
    const curv = s.curvatureUm * ((dx * dx + dy * dy) / this.rMax2 - 0.4);
    const drift = t <= s.drift.startAcquisition ? 0 : s.drift.rateUmPerAcquisition * (t - s.drift.startAcquisition);
    return s.z0 + tilt + curv + drift;
  }

  /** True best focus of a tile (its bump included) after `t` acquisitions. */
  trueFocus(tile: SimTile, t: number): number {
    return this.smoothFocus(tile.x, tile.y, t) + tile.bumpUm;
  }

  /** The scanner's own plan for a tile before any correction: one flat focus for the whole slide. */
  plannedZ(_tile: SimTile): number {
    return this.surface.z0;
  }
}

export function isTissueKind(k: SynthKind): boolean {
  return k === 'tissue' || k === 'pale';
}

function round3(x: number): number {
  return Math.round(x * 1000) / 1000;
}
