#!/usr/bin/env node
// CPU latency of a model bundle in onnxruntime-node, one 320x320 patch per call (batch 1), 1 and 2 intra-op threads.
// usage: node scripts/bench-model-latency.mjs [BUNDLE_DIR=models/default] [ITERS=200]
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ort from 'onnxruntime-node';

const dir = process.argv[2] ?? 'models/default';
const iters = Number(process.argv[3] ?? 200);
const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
const [h, w] = manifest.input.size;
const results = {};
for (const threads of [1, 2]) {
  const session = await ort.InferenceSession.create(join(dir, manifest.file), {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  const data = new Float32Array(3 * h * w);
  for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 0.37) * 1.5;
  const feeds = { [manifest.input.name]: new ort.Tensor('float32', data, [1, 3, h, w]) };
  for (let i = 0; i < 20; i++) await session.run(feeds);
  const times = [];
  for (let i = 0; i < iters; i++) {
    const t = process.hrtime.bigint();
    await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  times.sort((a, b) => a - b);
  results[`threads_${threads}`] = {
    median_ms: +times[Math.floor(times.length / 2)].toFixed(3),
    p90_ms: +times[Math.floor(times.length * 0.9)].toFixed(3),
    min_ms: +times[0].toFixed(3),
  };
  await session.release();
}
console.log(JSON.stringify({ bundle: dir, architecture: manifest.architecture, patch: [h, w], iters, node: process.version, ...results }, null, 1));
