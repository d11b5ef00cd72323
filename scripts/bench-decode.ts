// Decode throughput of one 1600x1200 tile per payload kind (raw pixel types, PNG, JPEG, TIFF).
// Run: npx tsx scripts/bench-decode.ts [iterations]
import sharp from 'sharp';
import { decodeTile } from '../imaging/decode.js';
import { synthTile } from '../sim/procedural.js';
import type { IncomingTile, PixelType, TileFormat, TileHeader } from '../core/types.js';
import { BYTES_PER_PIXEL } from '../protocol/header.js';

const W = 1600;
const H = 1200;
const iters = Number(process.argv[2] ?? 50);

const base: TileHeader = {
  v: 1, scanner: 'bench', slide: 's', scan: 'c', seq: 0, tile: { index: 0, row: 0, col: 0 },
  stage_um: { x: 0, y: 0, z: 0 }, pixel_size_um: 0.22, objective: '20x', acquired_at: new Date().toISOString(), attempt: 0, format: 'raw',
};

// a realistic tile (procedural H&E tissue with sensor noise), so PNG/JPEG sizes and decode times are representative
const rgb = synthTile({ width: W, height: H, seed: 7, kind: 'tissue' }).rgb;

function rawPayload(pt: PixelType, pad: number): Buffer {
  const bpp = BYTES_PER_PIXEL[pt];
  const stride = W * bpp + pad;
  const b = Buffer.alloc(stride * H);
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) b[y * stride + x * bpp] = rgb[(y * W + x) * 3]!;
  return b;
}

async function time(name: string, tile: IncomingTile, bytes: number) {
  for (let i = 0; i < 10; i++) await decodeTile(tile, { maxPixels: 40e6 });
  const ts: number[] = [];
  for (let i = 0; i < iters; i++) {
    const t0 = performance.now();
    await decodeTile(tile, { maxPixels: 40e6 });
    ts.push(performance.now() - t0);
  }
  ts.sort((a, b) => a - b);
  const med = ts[Math.floor(ts.length / 2)]!;
  // min is the machine's capability, median what a busy machine gives
  console.log(
    `${name.padEnd(18)} ${(bytes / 1e6).toFixed(2).padStart(6)} MB  min ${ts[0]!.toFixed(2).padStart(6)} ms  median ${med.toFixed(2).padStart(6)} ms  ${(1000 / med).toFixed(0).padStart(5)} tiles/s`,
  );
}

console.log(`decodeTile, ${W}x${H}, ${iters} iterations, node ${process.version}, load ${(await import('node:os')).loadavg()[0]!.toFixed(2)}`);
for (const pt of ['GRAY8', 'GRAY16', 'RGB24', 'BGR24', 'RGB48', 'BGR48'] as PixelType[]) {
  for (const pad of [0, 64]) {
    const payload = rawPayload(pt, pad);
    const header: TileHeader = { ...base, width: W, height: H, pixel_type: pt, ...(pad ? { stride: W * BYTES_PER_PIXEL[pt] + pad } : {}) };
    await time(`raw ${pt}${pad ? ' +stride' : ''}`, { header, payload, receivedAt: 0 }, payload.length);
  }
}
const img = () => sharp(rgb, { raw: { width: W, height: H, channels: 3 } });
const encoded: Array<[string, TileFormat, Buffer]> = [
  ['png', 'png', await img().png().toBuffer()],
  ['png 16-bit', 'png', await img().toColourspace('rgb16').png().toBuffer()],
  ['jpeg q90', 'jpeg', await img().jpeg({ quality: 90 }).toBuffer()],
  ['tiff lzw', 'tiff', await img().tiff({ compression: 'lzw' }).toBuffer()],
];
for (const [name, format, payload] of encoded) await time(name, { header: { ...base, format }, payload, receivedAt: 0 }, payload.length);
