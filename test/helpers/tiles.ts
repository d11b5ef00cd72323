// Test images for the ingest edge, generated in memory: headers, raw payloads of every pixel type, a PNG bomb.
import { createHash } from 'node:crypto';
import zlib from 'node:zlib';
import type { PixelType, TileHeader } from '../../core/types.js';
import { BYTES_PER_PIXEL } from '../../protocol/header.js';

export function header(over: Partial<TileHeader> & Record<string, unknown> = {}): TileHeader {
  return {
    v: 1,
    scanner: 'axioscan-test',
    slide: 'S-001',
    scan: 'scan-1',
    seq: 0,
    tile: { index: 0, row: 0, col: 0 },
    stage_um: { x: 100.5, y: 200.25, z: -3.5 },
    pixel_size_um: 0.22,
    objective: 'Plan-Apochromat 20x/0.8',
    acquired_at: '2025-03-14T09:26:53.589Z',
    attempt: 0,
    format: 'png',
    ...over,
  } as TileHeader;
}

/** An 8-bit RGB reference image where every channel varies differently with x and y (swaps and stride slips show). */
export function referenceRgb(w: number, h: number): Buffer {
  const b = Buffer.alloc(w * h * 3);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const i = (y * w + x) * 3;
      b[i] = (x * 5 + y) & 255;
      b[i + 1] = (x + y * 3 + 40) & 255;
      b[i + 2] = (x ^ (y * 7)) & 255;
    }
  return b;
}

/** What decodeTile must return for `ref` sent as `pt`: grey types carry the red channel only. */
export function expectedRgb(ref: Buffer, pt: PixelType): Buffer {
  if (!pt.startsWith('GRAY')) return ref;
  const out = Buffer.alloc(ref.length);
  for (let i = 0; i < ref.length; i += 3) out[i] = out[i + 1] = out[i + 2] = ref[i]!;
  return out;
}

/**
 * `ref` encoded as a raw payload of `pt` with `pad` bytes of row padding (filled with 0xEE, which must never show up).
 * 16-bit samples are little-endian (v << 8) | noise: the noise sits in the low byte that the 8-bit mapping drops, so a
 * decoder reading the wrong byte order or the wrong shift gets garbage instead of `ref`.
 */
export function rawPayload(ref: Buffer, w: number, h: number, pt: PixelType, pad = 0): { payload: Buffer; stride: number } {
  const bpp = BYTES_PER_PIXEL[pt];
  const stride = w * bpp + pad;
  const p = Buffer.alloc(stride * h, 0xee);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const s = (y * w + x) * 3;
      const [r, g, b] = [ref[s]!, ref[s + 1]!, ref[s + 2]!];
      const o = y * stride + x * bpp;
      const noise = (x * 31 + y * 17) & 255;
      switch (pt) {
        case 'GRAY8':
          p[o] = r;
          break;
        case 'GRAY16':
          p.writeUInt16LE((r << 8) | noise, o);
          break;
        case 'RGB24':
          p[o] = r;
          p[o + 1] = g;
          p[o + 2] = b;
          break;
        case 'BGR24':
          p[o] = b;
          p[o + 1] = g;
          p[o + 2] = r;
          break;
        case 'RGB48':
          p.writeUInt16LE((r << 8) | noise, o);
          p.writeUInt16LE((g << 8) | noise, o + 2);
          p.writeUInt16LE((b << 8) | noise, o + 4);
          break;
        case 'BGR48':
          p.writeUInt16LE((b << 8) | noise, o);
          p.writeUInt16LE((g << 8) | noise, o + 2);
          p.writeUInt16LE((r << 8) | noise, o + 4);
          break;
      }
    }
  return { payload: p, stride };
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

const CRC_TABLE = new Int32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});

function crc32(b: Buffer): number {
  let c = -1;
  for (const x of b) c = CRC_TABLE[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

function pngChunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

/**
 * A real decompression bomb: a complete, valid single-colour 8-bit grey PNG of w x h pixels (20000 x 20000 inflates to
 * 400 MB but is ~0.4 MB on the wire). Deflated row by row so building it never holds the inflated image.
 */
export async function bombPng(w: number, h: number, grey = 200): Promise<Buffer> {
  const def = zlib.createDeflate({ level: 9 });
  const chunks: Buffer[] = [];
  def.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise((r) => def.on('end', r));
  const row = Buffer.alloc(1 + w, grey);
  row[0] = 0; // filter type none
  const block = Buffer.concat(Array<Buffer>(64).fill(row));
  for (let y = 0; y < h; y += 64) {
    const rows = Math.min(64, h - y);
    const part = rows === 64 ? block : block.subarray(0, rows * row.length);
    if (!def.write(part)) await new Promise((r) => def.once('drain', r));
  }
  def.end();
  await ended;
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 0; // colour type grey
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', Buffer.concat(chunks)),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

export { testContext } from './context.js';
