/** What the scorer reads on the simulator's tiles per instrument and true defocus (diagnostic). */
import { loadConfig } from '../config/load.js';
import type { Context } from '../core/context.js';
import { TypedEmitter, type DaemonEvents } from '../core/events.js';
import { createLogger } from '../core/logger.js';
import { Metrics } from '../core/metrics.js';
import type { TileHeader } from '../core/types.js';
import { createScorer } from '../models/index.js';
import { instrumentOptics, INSTRUMENTS } from '../sim/instruments.js';
import { TileRenderer } from '../sim/render.js';
import { VirtualSlide, isTissueKind } from '../sim/slide.js';
import { imageSceneSource, loadTissueImages, resolveTissueSpec } from '../sim/tissue-images.js';
const config = loadConfig({ overrides: { 'scoring.scorer': 'cnn', ...(process.env.FOCUSD_MODEL ? { 'scoring.model': process.env.FOCUSD_MODEL } : {}) }, env: {} });
const ctx: Context = { config, logger: createLogger({ level: 'warn', format: 'pretty', stream: process.stderr }), metrics: new Metrics(), events: new TypedEmitter<DaemonEvents>(), runtime: { toleranceUm: 1, dryRun: true, paused: false } };
const scorer = createScorer(ctx);
await scorer.start(new AbortController().signal);
const zs = (process.argv[2] ?? '-3,-2,-1.5,-1,-0.5,0,0.5,1,1.5,2,3').split(',').map(Number);
const insts = (process.argv[3] ?? INSTRUMENTS.join(',')).split(',');
const slide = new VirtualSlide({ seed: 1001 });
const tiles = slide.tiles.filter((t) => isTissueKind(t.kind)).slice(0, Number(process.argv[4] ?? 8));
for (const name of insts) {
  const r = new TileRenderer(instrumentOptics(name as never), 64, process.argv[5] ? imageSceneSource(await loadTissueImages(resolveTissueSpec(process.argv[5]))) : undefined);
  const line: string[] = [];
  const base = new Map<number, number>();
  for (const z of zs) {
    const ds: number[] = []; const cs: number[] = []; const sh: number[] = [];
    for (const t of tiles) {
      const img = r.render(slide, t, z);
      const s = await scorer.score({ header: { pixel_size_um: 0.22 } as TileHeader, width: img.width, height: img.height, rgb: img.rgb, receivedAt: 0 });
      if (s.defocus_um !== null) { ds.push(s.defocus_um); cs.push(s.sign_confidence ?? 0); sh.push((s.sharpness ?? NaN) / (base.get(t.index) ?? ((base.set(t.index, s.sharpness ?? NaN)), s.sharpness ?? NaN))); }
    }
    ds.sort((a, b) => a - b);
    const med = ds[Math.floor(ds.length / 2)] ?? NaN;
    const absMed = ds.map(Math.abs).sort((a, b) => a - b)[Math.floor(ds.length / 2)] ?? NaN;
    sh.sort((a, b) => a - b);
    const absMin = Math.min(...ds.map(Math.abs));
    line.push(`z${z}: S=${sh[Math.floor(sh.length / 2)]?.toFixed(2)}[${sh[0]?.toFixed(2)},${sh[sh.length - 1]?.toFixed(2)}] d=${med.toFixed(2)} |d|=${absMed.toFixed(2)} min|d|=${absMin.toFixed(2)} [${ds[0]?.toFixed(1)},${ds[ds.length - 1]?.toFixed(1)}]`);
  }
  console.log(name.padEnd(16), line.join(' | '));
}
await scorer.stop();
