import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { DecodeError, decodeTile } from '../../imaging/decode.js';
import { PIXEL_TYPES, type IncomingTile, type TileHeader } from '../../core/types.js';
import { synthTile } from '../../sim/procedural.js';
import { bombPng, expectedRgb, header, rawPayload, referenceRgb } from '../helpers/tiles.js';

const W = 37; // odd sizes: no accidental alignment
const H = 23;
const ref = referenceRgb(W, H);
const REF_OF = (i: number) => ref[i]!;
const opts = { maxPixels: 40_000_000 };

const tile = (h: Partial<TileHeader>, payload: Buffer): IncomingTile => ({ header: header(h), payload, receivedAt: 1 });

async function decodeError(t: IncomingTile, o = opts): Promise<DecodeError> {
  try {
    await decodeTile(t, o);
  } catch (err) {
    expect(err).toBeInstanceOf(DecodeError);
    return err as DecodeError;
  }
  throw new Error('expected decodeTile to throw');
}

describe('decodeTile raw', () => {
  for (const pt of PIXEL_TYPES) {
    for (const pad of [0, 5]) {
      it(`${pt}${pad ? ' with row padding' : ''} gives the reference RGB`, async () => {
        const { payload, stride } = rawPayload(ref, W, H, pt, pad);
        const d = await decodeTile(tile({ format: 'raw', width: W, height: H, pixel_type: pt, ...(pad ? { stride } : {}) }, payload), opts);
        expect(d.width).toBe(W);
        expect(d.height).toBe(H);
        expect(d.rgb.length).toBe(W * H * 3);
        expect(d.rgb.equals(expectedRgb(ref, pt))).toBe(true);
        expect(d.receivedAt).toBe(1);
      });
    }
  }

  it('GRAY8 and BGR24 at a size past the buffer pool (fast whole-image paths) with a pixel count not divisible by 4', async () => {
    const [w, h] = [101, 53];
    const big = referenceRgb(w, h);
    for (const pt of ['GRAY8', 'BGR24'] as const) {
      const { payload } = rawPayload(big, w, h, pt);
      const d = await decodeTile(tile({ format: 'raw', width: w, height: h, pixel_type: pt }, payload), opts);
      expect(d.rgb.equals(expectedRgb(big, pt)), pt).toBe(true);
    }
  });

  it('maps 12-bit data in 16-bit containers with significant_bits', async () => {
    const payload = Buffer.alloc(4 * 2);
    [0, 2048, 4095, 65535].forEach((v, i) => payload.writeUInt16LE(v, i * 2));
    const d = await decodeTile(tile({ format: 'raw', width: 4, height: 1, pixel_type: 'GRAY16', significant_bits: 12 }, payload), opts);
    // v >> 4, clamped: out-of-range data saturates instead of wrapping
    expect([...d.rgb.subarray(0, 12)]).toEqual([0, 0, 0, 128, 128, 128, 255, 255, 255, 255, 255, 255]);
    const full = await decodeTile(tile({ format: 'raw', width: 4, height: 1, pixel_type: 'GRAY16' }, payload), opts);
    expect([...full.rgb.filter((_, i) => i % 3 === 0)]).toEqual([0, 8, 15, 255]);
  });

  for (const pt of ['RGB48', 'BGR48'] as const) {
    it(`${pt} with significant_bits 12 (lookup path) gives the reference RGB`, async () => {
      const pad = 4;
      const stride = W * 6 + pad;
      const payload = Buffer.alloc(stride * H, 0xee);
      for (let y = 0; y < H; y++)
        for (let x = 0; x < W; x++) {
          const i = (y * W + x) * 3;
          const rgb = [REF_OF(i), REF_OF(i + 1), REF_OF(i + 2)];
          const order = pt === 'RGB48' ? rgb : [rgb[2]!, rgb[1]!, rgb[0]!];
          // 12-bit samples: value << 4 plus noise in the 4 bits the mapping drops
          order.forEach((v, c) => payload.writeUInt16LE((v << 4) | ((x + c) & 15), y * stride + x * 6 + c * 2));
        }
      const d = await decodeTile(tile({ format: 'raw', width: W, height: H, pixel_type: pt, stride, significant_bits: 12 }, payload), opts);
      expect(d.rgb.equals(ref)).toBe(true);
    });
  }

  it('rejects a payload of the wrong size and too many pixels even when called directly', async () => {
    const short = await decodeError(tile({ format: 'raw', width: W, height: H, pixel_type: 'RGB24' }, Buffer.alloc(W * H * 3 - 1)));
    expect(short.reason).toBe('payload_size_mismatch');
    const big = await decodeError(tile({ format: 'raw', width: 100, height: 100, pixel_type: 'GRAY8' }, Buffer.alloc(10_000)), { maxPixels: 9_999 });
    expect(big.reason).toBe('too_many_pixels');
  });
});

describe('decodeTile encoded', () => {
  const img = () => sharp(ref, { raw: { width: W, height: H, channels: 3 } });
  let bomb: Buffer;
  beforeAll(async () => {
    bomb = await bombPng(20_000, 20_000);
  });

  it('png and 8-bit tiff decode losslessly', async () => {
    for (const [format, payload] of [
      ['png', await img().png().toBuffer()],
      ['tiff', await img().tiff({ compression: 'lzw' }).toBuffer()], // sharp's tiff() default is JPEG-compressed
    ] as const) {
      const d = await decodeTile(tile({ format }, payload), opts);
      expect([d.width, d.height]).toEqual([W, H]);
      expect(d.rgb.equals(ref), format).toBe(true);
    }
  });

  it('jpeg decodes close to the original', async () => {
    const d = await decodeTile(tile({ format: 'jpeg' }, await img().jpeg({ quality: 100, chromaSubsampling: '4:4:4' }).toBuffer()), opts);
    let err = 0;
    for (let i = 0; i < ref.length; i++) err += Math.abs(d.rgb[i]! - ref[i]!);
    expect(err / ref.length).toBeLessThan(4);
  });

  it('16-bit png and tiff keep the top byte of every sample', async () => {
    const u16 = new Uint16Array(W * H * 3);
    for (let i = 0; i < u16.length; i++) u16[i] = (ref[i]! << 8) | (i & 255);
    const img16 = () => sharp(u16, { raw: { width: W, height: H, channels: 3 } }).toColourspace('rgb16');
    for (const [format, buf] of [
      ['png', await img16().png().toBuffer()],
      ['tiff', await img16().tiff({ compression: 'lzw' }).toBuffer()],
    ] as const) {
      expect((await sharp(buf).metadata()).depth, format).toBe('ushort');
      const d = await decodeTile(tile({ format }, buf), opts);
      expect(d.rgb.equals(ref), format).toBe(true);
    }
  });

  it('grey png becomes three equal channels', async () => {
    const grey = Buffer.alloc(W * H);
    for (let i = 0; i < grey.length; i++) grey[i] = ref[i * 3]!;
    const d = await decodeTile(tile({ format: 'png' }, await sharp(grey, { raw: { width: W, height: H, channels: 1 } }).png().toBuffer()), opts);
    expect(d.rgb.equals(expectedRgb(ref, 'GRAY8'))).toBe(true);
  });

  it('16-bit grey png maps to 8-bit grey', async () => {
    const g16 = new Uint16Array(W * H);
    for (let i = 0; i < g16.length; i++) g16[i] = (ref[i * 3]! << 8) | 0x7f;
    const png = await sharp(g16, { raw: { width: W, height: H, channels: 1 } }).toColourspace('grey16').png().toBuffer();
    const d = await decodeTile(tile({ format: 'png' }, png), opts);
    expect(d.rgb.equals(expectedRgb(ref, 'GRAY8'))).toBe(true);
  });

  it('alpha is flattened onto white', async () => {
    // four pixels: opaque red, transparent, half-transparent black, opaque blue
    const rgba = Buffer.from([255, 0, 0, 255, 10, 20, 30, 0, 0, 0, 0, 128, 0, 0, 255, 255]);
    const d = await decodeTile(tile({ format: 'png' }, await sharp(rgba, { raw: { width: 2, height: 2, channels: 4 } }).png().toBuffer()), opts);
    expect([...d.rgb.subarray(0, 6)]).toEqual([255, 0, 0, 255, 255, 255]);
    for (const v of d.rgb.subarray(6, 9)) expect(Math.abs(v - 127)).toBeLessThanOrEqual(1);
    expect([...d.rgb.subarray(9, 12)]).toEqual([0, 0, 255]);
  });

  it('a 20000x20000 png bomb is rejected as too_many_pixels without inflating it', async () => {
    expect(bomb.length).toBeLessThan(1_000_000);
    const t0 = performance.now();
    const e = await decodeError(tile({ format: 'png' }, bomb));
    expect(e.reason).toBe('too_many_pixels');
    expect(e.message).toContain('40000000');
    // inflating 400 MB takes seconds; the header check takes milliseconds (generous bound, this is not a benchmark)
    expect(performance.now() - t0).toBeLessThan(1000);
  });

  it('a truncated png is decode_failed', async () => {
    const png = await img().png().toBuffer();
    const e = await decodeError(tile({ format: 'png' }, png.subarray(0, Math.floor(png.length / 2))));
    expect(e.reason).toBe('decode_failed');
    expect(e.message).toMatch(/png payload could not be decoded/);
  });

  it('a truncated jpeg and tiff are decode_failed', async () => {
    for (const [format, buf] of [
      ['jpeg', await img().jpeg().toBuffer()],
      ['tiff', await img().tiff({ compression: 'lzw' }).toBuffer()], // sharp's tiff() default is JPEG-compressed
    ] as const) {
      const e = await decodeError(tile({ format }, buf.subarray(0, Math.floor(buf.length * 0.8))));
      expect(e.reason, format).toBe('decode_failed');
    }
  });

  it('a corrupt jpeg (stray marker, zeroed run, SOF that claims 6000x6000) is decode_failed, not grey pixels (issue 10, defect 5)', async () => {
    const t = synthTile({ width: 800, height: 600, seed: 3, kind: 'tissue', defocusUm: 4 });
    const jpg = await sharp(t.rgb, { raw: { width: 800, height: 600, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
    expect((await decodeTile(tile({ format: 'jpeg' }, jpg), opts)).width).toBe(800);
    // walk the markers to the frame header (SOF0): height and width follow its length and precision
    let sof = 2;
    while (jpg[sof + 1] !== 0xc0) sof += 2 + jpg.readUInt16BE(sof + 2);
    const lying = Buffer.from(jpg);
    lying.writeUInt16BE(6000, sof + 5);
    lying.writeUInt16BE(6000, sof + 7);
    const entropy = jpg.length - 2000; // well inside the scan data
    const marker = Buffer.from(jpg);
    marker[entropy] = 0xff;
    const zeroed = Buffer.from(jpg);
    zeroed.fill(0, entropy, entropy + 64);
    for (const [name, buf] of [['6000x6000 SOF', lying], ['stray 0xff', marker], ['zeroed run', zeroed]] as const) {
      const e = await decodeError(tile({ format: 'jpeg' }, buf));
      expect(e.reason, name).toBe('decode_failed');
      expect(e.message, name).toMatch(/jpeg payload could not be decoded: .*Corrupt JPEG data/);
    }
  });

  it('a payload that is not the declared format is decode_failed and says what it looks like', async () => {
    const e = await decodeError(tile({ format: 'png' }, await img().jpeg().toBuffer()));
    expect(e.reason).toBe('decode_failed');
    expect(e.message).toContain('looks like jpeg');
    const empty = await decodeError(tile({ format: 'tiff' }, Buffer.alloc(0)));
    expect(empty.reason).toBe('decode_failed');
  });
});
