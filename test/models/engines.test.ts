import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { synthTile } from '../../sim/procedural.js';
import { detectTissue } from '../../imaging/tissue.js';
import { loadEngineModel } from '../../models/cnn-scorer.js';
import { ENGINE_TYPES, createEngine } from '../../models/engines/registry.js';
import type { InferenceEngine } from '../../models/engines/types.js';
import { PatchBatcher, PatchBytes, planPatches } from '../../models/patches.js';
import { LoopProbe } from '../helpers/loop-probe.js';
import { scoringContext } from '../helpers/scoring-ctx.js';
import { TINY_PIXEL_UM, writeOnnxBundle, writeSlowTfjsBundle, writeTfjsBundle } from '../helpers/tiny-model.js';

let dir: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'focusd-engines-'));
  writeOnnxBundle(join(dir, 'onnx'));
  writeOnnxBundle(join(dir, 'onnx-slow'), 'model', true);
  await writeTfjsBundle(join(dir, 'tfjs'));
  await writeSlowTfjsBundle(join(dir, 'tfjs-slow'));
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function started(type: 'onnx' | 'tfjs', bundle: string, device = 'cpu') {
  const { ctx, logs } = scoringContext({ 'scoring.scorer': 'classical', 'scoring.engine.type': type, 'scoring.engine.device': device, 'scoring.engine.batchSize': 4 });
  const fallbacks: Array<{ requested: string; chosen: string; reason: string }> = [];
  ctx.events.on('engine:fallback', (f) => fallbacks.push(f));
  const engine = createEngine(ctx, await loadEngineModel(join(dir, bundle)));
  await engine.start(new AbortController().signal);
  return { engine, logs, fallbacks, ctx };
}

/** Patches of one synthetic tile in the given layout, the same cells for both engines. */
async function patches(layout: 'NCHW' | 'NHWC', n: number) {
  const { ctx } = scoringContext();
  const tile = synthTile({ width: 640, height: 512, seed: 21, kind: 'tissue', defocusUm: 2, pixelSizeUm: 0.22 });
  const input = (await loadEngineModel(join(dir, layout === 'NCHW' ? 'onnx' : 'tfjs'))).manifest.input;
  const tissue = detectTissue(tile.rgb, tile.width, tile.height, ctx.config.tissue);
  const plan = planPatches(tile.width, tile.height, 0.22, input, tissue, { maxPerTile: n, minTissueFraction: 0 });
  const b = new PatchBatcher(input, n);
  plan.selected.forEach((c, k) => b.fill(k, tile.rgb, tile.width, tile.height, c));
  return { data: b.view(plan.selected.length).slice(), shape: b.shape(plan.selected.length), n: plan.selected.length };
}

describe('engine registry', () => {
  it('has a factory for every scoring.engine.type in the config schema', () => {
    expect(ENGINE_TYPES.sort()).toEqual(['onnx', 'tfjs']);
  });
});

describe('onnx engine', () => {
  it('runs on cpu and says so in one log line', async () => {
    const { engine, logs, fallbacks } = await started('onnx', 'onnx');
    try {
      expect(engine.info.engine).toBe('onnxruntime/cpu');
      expect(fallbacks).toEqual([]);
      const chosen = logs.filter((l) => String(l.message).startsWith('inference: onnxruntime on'));
      expect(chosen).toHaveLength(1);
      expect(String(chosen[0]!.message)).toContain('scoring.engine.device is cpu');
      const p = await patches('NCHW', 6);
      const out = await engine.run(p.data, p.shape);
      expect(out.abs_um).toHaveLength(p.n);
      expect(out.sign_logit).toHaveLength(p.n);
      for (const v of out.abs_um) expect(v).toBeGreaterThan(0);
    } finally {
      await engine.stop();
    }
  });

  it('falls back loudly from cuda to cpu on a machine without CUDA: warn log, event and engine string give the reason', async () => {
    const { engine, logs, fallbacks } = await started('onnx', 'onnx', 'cuda');
    try {
      expect(fallbacks).toHaveLength(1);
      expect(fallbacks[0]).toMatchObject({ requested: 'cuda', chosen: 'cpu' });
      expect(fallbacks[0]!.reason.length).toBeGreaterThan(5);
      expect(engine.info.engine).toMatch(/^onnxruntime\/cpu \(fallback from cuda: .+\)$/);
      expect(engine.info.fallbackReason).toBe(fallbacks[0]!.reason);
      const warn = logs.filter((l) => l.level === 'warn' && String(l.message).includes('falling back'));
      expect(warn).toHaveLength(1);
      expect(warn[0]!.reason).toBe(fallbacks[0]!.reason);
      const chosen = logs.filter((l) => String(l.message).startsWith('inference: onnxruntime on'));
      expect(chosen).toHaveLength(1);
      expect(String(chosen[0]!.message)).toContain('fallback from cuda');
      // and it still works
      const p = await patches('NCHW', 2);
      expect((await engine.run(p.data, p.shape)).abs_um).toHaveLength(p.n);
    } finally {
      await engine.stop();
    }
  });
});

describe('tfjs engine', () => {
  it('tries tfjs-node, logs why it is unavailable, runs on wasm in a worker', async () => {
    const { engine, logs, fallbacks } = await started('tfjs', 'tfjs');
    try {
      expect(engine.info.engine).toBe('tfjs/wasm');
      expect(fallbacks).toEqual([]);
      expect(logs.some((l) => /tfjs backend tfjs-node unavailable: .*Cannot find module/.test(String(l.message)))).toBe(true);
      expect(logs.filter((l) => String(l.message).startsWith('inference: tfjs on wasm'))).toHaveLength(1);
    } finally {
      await engine.stop();
    }
  });

  it('a requested gpu that tfjs cannot use falls back loudly', async () => {
    const { engine, logs, fallbacks } = await started('tfjs', 'tfjs', 'gpu');
    try {
      expect(fallbacks).toHaveLength(1);
      expect(fallbacks[0]).toMatchObject({ requested: 'gpu', chosen: 'tfjs/wasm' });
      expect(fallbacks[0]!.reason).toMatch(/tfjs-node-gpu/);
      expect(engine.info.engine).toMatch(/^tfjs\/wasm \(fallback from gpu: /);
      expect(logs.some((l) => l.level === 'warn' && String(l.message).includes('tfjs backend tfjs-node-gpu unavailable'))).toBe(true);
    } finally {
      await engine.stop();
    }
  });
});

describe('onnx and tfjs agree', () => {
  it('give the same outputs for the same net and the same patches (tolerance 1e-4 absolute)', async () => {
    const a = await started('onnx', 'onnx');
    const b = await started('tfjs', 'tfjs');
    try {
      const pc = await patches('NCHW', 8);
      const pl = await patches('NHWC', 8);
      expect(pc.n).toBe(pl.n);
      const oa = await a.engine.run(pc.data, pc.shape);
      const ob = await b.engine.run(pl.data, pl.shape);
      // sanity: the net really responds to the patches (not a constant)
      expect(Math.max(...oa.abs_um) - Math.min(...oa.abs_um)).toBeGreaterThan(1e-3);
      for (let i = 0; i < pc.n; i++) {
        expect(Math.abs(oa.abs_um[i]! - ob.abs_um[i]!)).toBeLessThan(1e-4);
        expect(Math.abs(oa.sign_logit[i]! - ob.sign_logit[i]!)).toBeLessThan(1e-4);
      }
    } finally {
      await a.engine.stop();
      await b.engine.stop();
    }
  });
});

describe('runBytes (8-bit patches, normalised in the worker) equals run (floats normalised in JS)', () => {
  for (const [type, bundle] of [
    ['onnx', 'onnx'],
    ['tfjs', 'tfjs'],
  ] as const) {
    it(type, async () => {
      const { engine } = await started(type, bundle);
      try {
        const { ctx } = scoringContext();
        const tile = synthTile({ width: 640, height: 512, seed: 22, kind: 'tissue', defocusUm: 1, pixelSizeUm: 0.22 });
        const input = (await loadEngineModel(join(dir, bundle))).manifest.input;
        const tissue = detectTissue(tile.rgb, tile.width, tile.height, ctx.config.tissue);
        const plan = planPatches(tile.width, tile.height, 0.22, input, tissue, { maxPerTile: 6, minTissueFraction: 0 });
        const f = new PatchBatcher(input, 6);
        const b = new PatchBytes(input, 6);
        plan.selected.forEach((c, k) => {
          f.fill(k, tile.rgb, tile.width, tile.height, c);
          b.fill(k, tile.rgb, tile.width, tile.height, c);
        });
        const n = plan.selected.length;
        expect(n).toBeGreaterThan(2);
        // this tile is at 0.22 µm, the model at 0.44: both paths resample (bytes round to 8 bits on the way)
        const a = await engine.run(f.view(n), f.shape(n));
        const c = await engine.runBytes(b.take(), n, { transfer: true });
        expect(c.returned?.byteLength).toBe(6 * 64 * 64 * 3);
        for (let i = 0; i < n; i++) expect(Math.abs(a.abs_um[i]! - c.abs_um[i]!)).toBeLessThan(0.02 * Math.max(1, a.abs_um[i]!));
      } finally {
        await engine.stop();
      }
    });
  }
});

describe('inference keeps the event loop free', () => {
  for (const [type, bundle] of [
    ['onnx', 'onnx-slow'],
    ['tfjs', 'tfjs-slow'],
  ] as const) {
    it(`${type}: timers keep firing all through each slow batch (relative to the batch time, load-robust)`, async () => {
      const { engine } = await started(type, bundle);
      try {
        const p = await patches(type === 'onnx' ? 'NCHW' : 'NHWC', 16);
        // the same patches repeated until one batch takes ≥ 900 ms (so ≥ 300 ms even when the load drops 3x): long against
        // any scheduler hiccup
        let reps = 1;
        for (;;) {
          const data = repeat(p.data, reps);
          const shape = [p.n * reps, ...p.shape.slice(1)];
          const t0 = performance.now();
          await engine.run(data, shape);
          if (performance.now() - t0 >= 900 || reps >= 128) break;
          reps *= 2;
        }
        const data = repeat(p.data, reps);
        const shape = [p.n * reps, ...p.shape.slice(1)];
        const probe = new LoopProbe();
        probe.start();
        try {
          for (let i = 0; i < 3; i++) await probe.time(() => engine.run(data, shape));
        } finally {
          probe.stop();
        }
        console.log(`${type}: batches of ${shape[0]} slow patches: ${probe.summary()}`);
        // a batch on the loop would make the longest timer gap a whole batch and leave no tick inside it; in the
        // worker, gaps are scheduler noise (tens of ms on a loaded 2-core box), far below a batch
        expect(probe.shortest).toBeGreaterThan(300);
        expect(probe.maxGap).toBeLessThan(0.5 * probe.shortest);
        for (const n of probe.ticksPerSpan) expect(n).toBeGreaterThanOrEqual(5);
      } finally {
        await engine.stop();
      }
    });
  }
});

/** `data` repeated `k` times end to end (a bigger batch of the same patches). */
function repeat(data: Float32Array, k: number): Float32Array {
  const out = new Float32Array(data.length * k);
  for (let i = 0; i < k; i++) out.set(data, i * data.length);
  return out;
}

export type { InferenceEngine };
void TINY_PIXEL_UM;
