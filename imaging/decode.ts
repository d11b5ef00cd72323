// Tile payload → 8-bit interleaved RGB (DecodedTile). Encoded formats go through sharp/libvips; raw pixel buffers are
// converted here in tight loops, because a 1600x1200 tile arrives every few ten milliseconds.
import sharp from 'sharp';
import type { DecodedTile, IncomingTile, PixelType, RejectReason, TileFormat } from '../core/types.js';
import { BYTES_PER_PIXEL, rawStride } from '../protocol/header.js';

/** A tile that cannot become pixels; `reason` is the stable rejection code (the pipeline reports it as is). */
export class DecodeError extends Error {
  constructor(readonly reason: RejectReason, message: string) {
    super(message);
    this.name = 'DecodeError';
  }
}

export interface DecodeOptions {
  /** width*height limit; encoded images are checked from their header before any pixel is decoded. */
  maxPixels: number;
}

/**
 * Decodes one tile to tightly packed 8-bit RGB.
 *
 * Encoded (png/jpeg/tiff, first page): converted to sRGB; grey is replicated to three channels; 16-bit samples keep
 * their top 8 bits (libvips' cast, v >> 8); an alpha channel is flattened onto white, because a transparent pixel
 * carries no specimen and white is what empty glass looks like in brightfield (so it reads as "no tissue", not as dark
 * tissue). Raw: see decodeRaw.
 */
export async function decodeTile(tile: IncomingTile, opts: DecodeOptions): Promise<DecodedTile> {
  const h = tile.header;
  if (h.format === 'raw') {
    const { width, height, rgb } = decodeRaw(tile.payload, {
      width: h.width!,
      height: h.height!,
      pixelType: h.pixel_type!,
      stride: rawStride(h),
      significantBits: h.significant_bits ?? 16,
      maxPixels: opts.maxPixels,
    });
    return { header: h, width, height, rgb, receivedAt: tile.receivedAt };
  }
  const { width, height, rgb } = await decodeEncoded(tile.payload, h.format, opts.maxPixels);
  return { header: h, width, height, rgb, receivedAt: tile.receivedAt };
}

const MAGIC: Record<Exclude<TileFormat, 'raw'>, (b: Buffer) => boolean> = {
  png: (b) => b.length >= 8 && b.readUInt32BE(0) === 0x89504e47 && b.readUInt32BE(4) === 0x0d0a1a0a,
  jpeg: (b) => b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff,
  // classic TIFF (II*\0, MM\0*) and BigTIFF (II+\0, MM\0+)
  tiff: (b) => b.length >= 4 && ((b[0] === 0x49 && b[1] === 0x49 && (b[2] === 0x2a || b[2] === 0x2b) && b[3] === 0) || (b[0] === 0x4d && b[1] === 0x4d && b[2] === 0 && (b[3] === 0x2a || b[3] === 0x2b))),
};

async function decodeEncoded(payload: Buffer, format: Exclude<TileFormat, 'raw'>, maxPixels: number) {
  // libvips sniffs the format itself; checking the declared one catches a sender that mislabels its payload
  if (!MAGIC[format](payload)) {
    const actual = (Object.keys(MAGIC) as Array<keyof typeof MAGIC>).find((f) => MAGIC[f](payload));
    throw new DecodeError(
      'decode_failed',
      `payload is not ${format}${actual ? ` (it looks like ${actual})` : ''}: starts with ${payload.subarray(0, 8).toString('hex') || '(empty)'}`,
    );
  }
  try {
    // TIFF and PNG: failOn 'error' rather than the default 'warning': libtiff warns about vendor tags it does not know
    // (ZEN writes some), which must not reject the tile; truncated PNG/TIFF data are errors and still fail.
    // JPEG: 'warning', because libjpeg reports corrupt entropy data (a stray marker, zeroed bytes, a SOF that claims
    // more pixels than the data holds) only as a warning and fills the rest with grey, which would get a verdict.
    // A changed byte that still decodes cleanly cannot be detected: JPEG has no checksum.
    const failOn = format === 'jpeg' ? 'warning' : 'error';
    const { data, info } = await sharp(payload, { limitInputPixels: maxPixels, failOn, sequentialRead: true })
      .flatten({ background: { r: 255, g: 255, b: 255 } })
      .toColourspace('srgb')
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 || data.length !== info.width * info.height * 3) {
      throw new DecodeError('decode_failed', `${format} decoded to ${info.channels} channels (${data.length} bytes), expected 3`);
    }
    return { width: info.width, height: info.height, rgb: data };
  } catch (err) {
    if (err instanceof DecodeError) throw err;
    // libvips' first line; "Input buffer has corrupt header:" ends in a colon with its reason cut off, and
    // "unsupported image format" for a truncated file reads as the wrong format: say what it usually is
    const msg = String((err as Error).message ?? err).split('\n')[0]!.trim().replace(/:$/, '').replace(/^Input buffer contains unsupported image format$/, 'not a readable image (truncated or corrupt, or another format than declared)');
    // sharp's wording for limitInputPixels (checked from the image header, before the pixels are inflated)
    if (/exceeds pixel limit/i.test(msg)) throw new DecodeError('too_many_pixels', `${format} image exceeds ${maxPixels} pixels (ingest.maxPixels): ${msg}`);
    throw new DecodeError('decode_failed', `${format} payload could not be decoded: ${msg}`);
  }
}

export interface RawLayout {
  width: number;
  height: number;
  pixelType: PixelType;
  /** bytes from one row to the next (>= width * bytes per pixel). */
  stride: number;
  /** 16-bit types: data bits per sample (8..16). */
  significantBits: number;
  maxPixels: number;
}

/**
 * Raw pixels → packed 8-bit RGB. GRAY8 is replicated, BGR is swapped to RGB, row padding (stride) is skipped.
 * 16-bit samples are little-endian and map to min(255, v >> (significantBits - 8)): plain v >> 8 for full 16-bit data,
 * v >> 4 for a 12-bit camera writing into a 16-bit container (whose top bits are zero and would otherwise come out
 * nearly black); full 16-bit data takes the high byte directly, other depths go through a 64 K lookup table.
 * Synchronous on purpose: a 1600x1200 tile takes 0-6 ms (scripts/bench-decode.ts), less than a hop to a worker.
 */
export function decodeRaw(payload: Buffer, l: RawLayout): { width: number; height: number; rgb: Buffer } {
  const { width: w, height: h, pixelType, stride } = l;
  const bpp = BYTES_PER_PIXEL[pixelType];
  if (bpp === undefined) throw new DecodeError('unknown_pixel_type', `pixel_type ${String(pixelType)} is not supported`);
  if (!(w > 0 && h > 0)) throw new DecodeError('decode_failed', `raw size ${w}x${h} is empty`);
  if (w * h > l.maxPixels) throw new DecodeError('too_many_pixels', `${w}x${h} = ${w * h} pixels, limit is ${l.maxPixels}`);
  if (stride < w * bpp) throw new DecodeError('decode_failed', `stride ${stride} < width * ${bpp} bytes`);
  if (payload.length !== stride * h) {
    throw new DecodeError('payload_size_mismatch', `raw ${pixelType} ${w}x${h} stride ${stride} needs ${stride * h} bytes, got ${payload.length}`);
  }
  const row = w * 3;
  const packedIn = stride === w * bpp;

  if (pixelType === 'RGB24' && packedIn) {
    // already the target layout: a view, no copy (the payload buffer is owned by this tile alone)
    return { width: w, height: h, rgb: payload.subarray(0, row * h) };
  }
  const outBuf = Buffer.allocUnsafe(row * h);
  // plain Uint8Array views keep every kernel monomorphic (Buffer and Uint8Array element access are different ICs)
  const src = new Uint8Array(payload.buffer, payload.byteOffset, payload.length);
  const out = new Uint8Array(outBuf.buffer, outBuf.byteOffset, outBuf.length);
  switch (pixelType) {
    case 'RGB24':
      for (let y = 0; y < h; y++) out.set(src.subarray(y * stride, y * stride + row), y * row);
      break;
    case 'BGR24':
      bgr24(src, out, w, h, stride);
      break;
    case 'GRAY8':
      gray8(src, out, w, h, stride);
      break;
    case 'GRAY16':
      // full 16-bit data: the high byte of each little-endian sample is gray8 with a 2-byte step
      if (l.significantBits >= 16) gray16High(src, out, w, h, stride);
      else gray16(src, out, w, h, stride, lut16(l.significantBits));
      break;
    case 'RGB48':
    case 'BGR48':
      // full 16-bit data maps to its high byte: no lookup needed (the common case)
      if (l.significantBits >= 16) rgb48High(src, out, w, h, stride, pixelType === 'RGB48' ? 0 : 4);
      else rgb48(src, out, w, h, stride, lut16(l.significantBits), pixelType === 'RGB48' ? 0 : 4);
      break;
  }
  return { width: w, height: h, rgb: outBuf };
}

function bgr24(src: Uint8Array, out: Uint8Array, w: number, h: number, stride: number): void {
  // copy rows (memcpy), then swap R and B in place: two reads and two writes per pixel instead of three and three
  const row = w * 3;
  if (stride === row) out.set(src.subarray(0, row * h));
  else for (let y = 0; y < h; y++) out.set(src.subarray(y * stride, y * stride + row), y * row);
  for (let i = 0, n = row * h; i < n; i += 3) {
    const t = out[i]!;
    out[i] = out[i + 2]!;
    out[i + 2] = t;
  }
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function gray8(src: Uint8Array, out: Uint8Array, w: number, h: number, stride: number): void {
  if (stride === w && LITTLE_ENDIAN && out.byteOffset % 4 === 0) return gray8Packed(src, out, w * h);
  const row = w * 3;
  for (let y = 0; y < h; y++) {
    let s = y * stride;
    let d = y * row;
    const end = d + row;
    while (d < end) {
      const v = src[s++]!;
      out[d] = v;
      out[d + 1] = v;
      out[d + 2] = v;
      d += 3;
    }
  }
}

/** 4 grey pixels → 12 bytes as three 32-bit stores (little-endian hosts). */
function gray8Packed(src: Uint8Array, out: Uint8Array, n: number): void {
  const n4 = n & ~3;
  const o32 = new Uint32Array(out.buffer, out.byteOffset, (n4 * 3) >> 2);
  let d = 0;
  for (let s = 0; s < n4; s += 4) {
    const a = src[s]!;
    const b = src[s + 1]!;
    const c = src[s + 2]!;
    const e = src[s + 3]!;
    o32[d] = (a | (a << 8) | (a << 16) | (b << 24)) >>> 0;
    o32[d + 1] = (b | (b << 8) | (c << 16) | (c << 24)) >>> 0;
    o32[d + 2] = (c | (e << 8) | (e << 16) | (e << 24)) >>> 0;
    d += 3;
  }
  for (let s = n4; s < n; s++) {
    const v = src[s]!;
    out[s * 3] = v;
    out[s * 3 + 1] = v;
    out[s * 3 + 2] = v;
  }
}

function gray16High(src: Uint8Array, out: Uint8Array, w: number, h: number, stride: number): void {
  const row = w * 3;
  for (let y = 0; y < h; y++) {
    let s = y * stride + 1;
    let d = y * row;
    const end = d + row;
    while (d < end) {
      const v = src[s]!;
      out[d] = v;
      out[d + 1] = v;
      out[d + 2] = v;
      d += 3;
      s += 2;
    }
  }
}

/** little-endian 16-bit grey through the lookup table. */
function gray16(src: Uint8Array, out: Uint8Array, w: number, h: number, stride: number, lut: Uint8Array): void {
  const row = w * 3;
  for (let y = 0; y < h; y++) {
    let s = y * stride;
    let d = y * row;
    const end = d + row;
    while (d < end) {
      const v = lut[src[s]! | (src[s + 1]! << 8)]!;
      out[d] = v;
      out[d + 1] = v;
      out[d + 2] = v;
      d += 3;
      s += 2;
    }
  }
}

/** little-endian 16-bit RGB (r = 0) or BGR (r = 4, byte offset of red within the 6-byte pixel). */
function rgb48(src: Uint8Array, out: Uint8Array, w: number, h: number, stride: number, lut: Uint8Array, r: number): void {
  const row = w * 3;
  const b = 4 - r;
  for (let y = 0; y < h; y++) {
    let s = y * stride;
    let d = y * row;
    const end = d + row;
    while (d < end) {
      out[d] = lut[src[s + r]! | (src[s + r + 1]! << 8)]!;
      out[d + 1] = lut[src[s + 2]! | (src[s + 3]! << 8)]!;
      out[d + 2] = lut[src[s + b]! | (src[s + b + 1]! << 8)]!;
      d += 3;
      s += 6;
    }
  }
}

/** rgb48 for significant_bits 16: the high byte (offset + 1, little-endian) of each sample. */
function rgb48High(src: Uint8Array, out: Uint8Array, w: number, h: number, stride: number, r: number): void {
  const row = w * 3;
  const rh = r + 1;
  const bh = 5 - r;
  for (let y = 0; y < h; y++) {
    let s = y * stride;
    let d = y * row;
    const end = d + row;
    while (d < end) {
      out[d] = src[s + rh]!;
      out[d + 1] = src[s + 3]!;
      out[d + 2] = src[s + bh]!;
      d += 3;
      s += 6;
    }
  }
}

/** 16-bit sample → 8-bit: min(255, v >> (bits - 8)). */
function lut16(significantBits: number): Uint8Array {
  const bits = Math.min(16, Math.max(8, Math.trunc(significantBits)));
  const shift = bits - 8;
  const lut = new Uint8Array(65536);
  for (let v = 0; v < 65536; v++) {
    const x = v >> shift;
    lut[v] = x > 255 ? 255 : x;
  }
  return lut;
}
