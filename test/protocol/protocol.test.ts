import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { MAX_HEADER_BYTES, MAX_JSON_DEPTH, jsonDepthExceeds, parseMessage, pixelSizeProblem } from '../../protocol/header.js';
import type { Rejection } from '../../core/types.js';
import { header } from '../helpers/tiles.js';

const limits = { maxMessageBytes: 1024 * 1024, maxPixels: 1_000_000 };
const enc = (h: unknown) => Buffer.from(JSON.stringify(h));

function rejectionOf(frames: Buffer[], l = limits): Rejection {
  const r = parseMessage(frames, l, 123);
  if (r.ok) throw new Error(`expected a rejection, got a tile: ${JSON.stringify(r.tile.header)}`);
  return r.rejection;
}

describe('parseMessage', () => {
  it('accepts a valid png message and keeps payload and receivedAt', () => {
    const payload = Buffer.from('not checked here');
    const r = parseMessage([enc(header()), payload], limits, 42.5);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.tile.header.stage_um).toEqual({ x: 100.5, y: 200.25, z: -3.5 });
    expect(r.tile.payload).toBe(payload);
    expect(r.tile.receivedAt).toBe(42.5);
  });

  it('accepts a raw message with stride and vendor x_ fields', () => {
    const h = header({ format: 'raw', width: 10, height: 4, pixel_type: 'BGR48', stride: 64, significant_bits: 12, x_zen: { scene: 2 } });
    const r = parseMessage([enc(h), Buffer.alloc(64 * 4)], limits, 0);
    expect(r.ok).toBe(true);
    if (r.ok) expect(r.tile.header.x_zen).toEqual({ scene: 2 });
  });

  it('rejects a wrong number of frames with bad_frames and still reports the header it could read', () => {
    const h = header({ seq: 7 });
    const three = rejectionOf([enc(h), Buffer.alloc(3), Buffer.alloc(5)]);
    expect(three.reason).toBe('bad_frames');
    expect(three.detail).toContain('got 3');
    expect(three.received).toEqual({ header: h, frames: 3, bytes: [enc(h).length, 3, 5] });
    const one = rejectionOf([enc(h)]);
    expect(one.reason).toBe('bad_frames');
    expect(one.received.frames).toBe(1);
  });

  it('rejects a message over maxMessageBytes with message_too_large', () => {
    const h = header({ seq: 9 });
    const r = rejectionOf([enc(h), Buffer.alloc(limits.maxMessageBytes)]);
    expect(r.reason).toBe('message_too_large');
    expect(r.detail).toContain(String(limits.maxMessageBytes));
    expect((r.received.header as { seq: number }).seq).toBe(9);
  });

  it('rejects a header that is not UTF-8 JSON with bad_json', () => {
    expect(rejectionOf([Buffer.from('{"v":1,'), Buffer.alloc(1)]).reason).toBe('bad_json');
    const latin1 = rejectionOf([Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), Buffer.alloc(1)]);
    expect(latin1.reason).toBe('bad_json');
    expect(latin1.detail).toContain('UTF-8');
    expect(latin1.received.header).toBeUndefined();
  });

  it('rejects a header that is not an object, or too large, with invalid_header', () => {
    expect(rejectionOf([enc([1, 2]), Buffer.alloc(1)]).detail).toContain('array');
    const big = Buffer.from(JSON.stringify({ ...header(), x_pad: 'a'.repeat(MAX_HEADER_BYTES) }));
    const r = rejectionOf([big, Buffer.alloc(1)]);
    expect(r.reason).toBe('invalid_header');
    expect(r.detail).toContain(String(MAX_HEADER_BYTES));
  });

  it('names the field in invalid_header details', () => {
    const wrongType = rejectionOf([enc(header({ stage_um: { x: 1, y: 2, z: '3' as unknown as number } })), Buffer.alloc(1)]);
    expect(wrongType.reason).toBe('invalid_header');
    expect(wrongType.detail).toContain('/stage_um/z must be number');

    const { stage_um: _drop, ...missing } = header();
    const m = rejectionOf([enc(missing), Buffer.alloc(1)]);
    expect(m.reason).toBe('invalid_header');
    expect(m.detail).toContain('/stage_um is required');

    expect(rejectionOf([enc(header({ seq: -1 })), Buffer.alloc(1)]).detail).toContain('/seq must be >= 0');
    expect(rejectionOf([enc(header({ attempt: 1.5 })), Buffer.alloc(1)]).detail).toContain('/attempt must be integer');
    expect(rejectionOf([enc(header({ pixel_size_um: 0 })), Buffer.alloc(1)]).detail).toContain('/pixel_size_um must be >= 0.01');
    expect(rejectionOf([enc(header({ acquired_at: 'yesterday' })), Buffer.alloc(1)]).detail).toContain('/acquired_at must match format "date-time"');
    expect(rejectionOf([enc(header({ format: 'gif' as 'png' })), Buffer.alloc(1)]).detail).toContain('/format must be one of png, jpeg, tiff, raw');
    expect(rejectionOf([enc({ ...header(), pixel_sise_um: 1 }), Buffer.alloc(1)]).detail).toContain('/pixel_sise_um is not allowed');
    expect(rejectionOf([enc({ ...header(), tile: { index: 0, row: 0 } }), Buffer.alloc(1)]).detail).toContain('/tile/col is required');
  });

  it('requires width, height and pixel_type for raw', () => {
    const r = rejectionOf([enc(header({ format: 'raw', width: 4 })), Buffer.alloc(16)]);
    expect(r.reason).toBe('invalid_header');
    expect(r.detail).toContain('/height is required');
    expect(r.detail).toContain('/pixel_type is required');
  });

  it('rejects another protocol version with unsupported_version, a missing v with invalid_header', () => {
    const r = rejectionOf([enc(header({ v: 2 as 1 })), Buffer.alloc(1)]);
    expect(r.reason).toBe('unsupported_version');
    expect(r.detail).toContain('v=2');
    const { v: _v, ...noV } = header();
    const m = rejectionOf([enc(noV), Buffer.alloc(1)]);
    expect(m.reason).toBe('invalid_header');
    expect(m.detail).toContain('/v is required');
  });

  it('rejects an unknown pixel type with unknown_pixel_type, not invalid_header', () => {
    const r = rejectionOf([enc(header({ format: 'raw', width: 2, height: 2, pixel_type: 'YUV422' as 'RGB24' })), Buffer.alloc(8)]);
    expect(r.reason).toBe('unknown_pixel_type');
    expect(r.detail).toContain('YUV422');
  });

  it('checks raw payload length against height * stride', () => {
    const r = rejectionOf([enc(header({ format: 'raw', width: 10, height: 10, pixel_type: 'RGB24' })), Buffer.alloc(299)]);
    expect(r.reason).toBe('payload_size_mismatch');
    expect(r.detail).toContain('needs 300');
    expect(r.detail).toContain('got 299');
    const s = rejectionOf([enc(header({ format: 'raw', width: 10, height: 10, pixel_type: 'GRAY16', stride: 24 })), Buffer.alloc(200)]);
    expect(s.reason).toBe('payload_size_mismatch');
    expect(s.detail).toContain('needs 240');
  });

  it('rejects a stride smaller than a packed row', () => {
    const r = rejectionOf([enc(header({ format: 'raw', width: 10, height: 1, pixel_type: 'RGB48', stride: 59 })), Buffer.alloc(59)]);
    expect(r.reason).toBe('invalid_header');
    expect(r.detail).toContain('/stride 59 must be >= width * bytes per pixel of RGB48 (60)');
  });

  it('rejects significant_bits on 8-bit and encoded types', () => {
    expect(rejectionOf([enc(header({ format: 'raw', width: 1, height: 1, pixel_type: 'RGB24', significant_bits: 12 })), Buffer.alloc(3)]).reason).toBe('invalid_header');
    expect(rejectionOf([enc(header({ significant_bits: 12 })), Buffer.alloc(3)]).reason).toBe('invalid_header');
  });

  it('rejects raw images over maxPixels with too_many_pixels before looking at the payload', () => {
    const r = rejectionOf([enc(header({ format: 'raw', width: 2000, height: 1000, pixel_type: 'GRAY8' })), Buffer.alloc(10)]);
    expect(r.reason).toBe('too_many_pixels');
    expect(r.detail).toContain('2000000');
  });

  it('bounds every numeric header field to a plausible range (issue 10, defect 1 and the seq note)', () => {
    const bad: Array<[Record<string, unknown>, string]> = [
      [{ pixel_size_um: 1000 }, '/pixel_size_um must be <= 100'],
      [{ pixel_size_um: 0.001 }, '/pixel_size_um must be >= 0.01'],
      [{ seq: 2 ** 53 + 2 }, '/seq must be <= 9007199254740991'],
      [{ seq: 1e300 }, '/seq must be <= 9007199254740991'],
      [{ attempt: 1e9 }, '/attempt must be <= 10000'],
      [{ tile: { index: 2 ** 31, row: 0, col: 0 } }, '/tile/index must be <= 2147483647'],
      [{ tile: { index: 0, row: 1e12, col: 0 } }, '/tile/row must be <= 2147483647'],
      [{ tile: { index: 0, row: 0, col: 1e12 } }, '/tile/col must be <= 2147483647'],
      [{ stage_um: { x: 1e7, y: 0, z: 0 } }, '/stage_um/x must be <= 1000000'],
      [{ stage_um: { x: 0, y: -1e7, z: 0 } }, '/stage_um/y must be >= -1000000'],
      [{ stage_um: { x: 0, y: 0, z: 1e308 } }, '/stage_um/z must be <= 1000000'],
      [{ format: 'raw', width: 70000, height: 1, pixel_type: 'GRAY8' }, '/width must be <= 65535'],
      [{ format: 'raw', width: 1, height: 70000, pixel_type: 'GRAY8' }, '/height must be <= 65535'],
      [{ format: 'raw', width: 1, height: 1, pixel_type: 'GRAY8', stride: 2 ** 21 }, '/stride must be <= 1048576'],
    ];
    for (const [over, msg] of bad) {
      const r = rejectionOf([enc(header(over)), Buffer.alloc(1)]);
      expect(r.reason, msg).toBe('invalid_header');
      expect(r.detail).toContain(msg);
    }
    // 1e309 is Infinity after JSON.parse (ajv does not count it as a number)
    const inf = Buffer.from(JSON.stringify(header()).replace('"x":100.5', '"x":1e309'));
    expect(rejectionOf([inf, Buffer.alloc(1)]).detail).toContain('/stage_um/x must be');
    // the largest safe seq passes
    expect(parseMessage([enc(header({ seq: Number.MAX_SAFE_INTEGER })), Buffer.alloc(1)], limits, 0).ok).toBe(true);
  });

  it('pixelSizeProblem: within a factor of 4 of the model, else a detail that names the field and the unit', () => {
    expect(pixelSizeProblem(0.22, 0.22)).toBeNull();
    expect(pixelSizeProblem(0.88, 0.22)).toBeNull();
    expect(pixelSizeProblem(0.055, 0.22)).toBeNull();
    const slip = pixelSizeProblem(220, 0.22)!;
    expect(slip).toContain('/pixel_size_um 220');
    expect(slip).toContain('1.00e+3x larger');
    expect(pixelSizeProblem(0.05, 0.22)).toContain('smaller');
  });

  it('refuses a header nested deeper than MAX_JSON_DEPTH without parsing it, and does not echo it (defect 3)', () => {
    for (const depth of [MAX_JSON_DEPTH + 1, 6000, 30000]) {
      const deep = `{"v":1,"x_deep":${'['.repeat(depth)}${']'.repeat(depth)}}`;
      const r = rejectionOf([Buffer.from(deep), Buffer.alloc(1)]);
      expect(r.reason).toBe('invalid_header');
      expect(r.detail).toContain(`deeper than ${MAX_JSON_DEPTH}`);
      expect(r.received.header).toBeUndefined();
      // the rejection (what is replied, published and logged) serialises
      expect(() => JSON.stringify(r)).not.toThrow();
    }
    // brackets inside strings (escaped quotes included) do not count; exactly the limit passes
    expect(jsonDepthExceeds(Buffer.from(`{"a":"${'['.repeat(100)}\\"${'{'.repeat(100)}"}`), 2)).toBe(false);
    const atLimit = `${'['.repeat(MAX_JSON_DEPTH - 1)}${']'.repeat(MAX_JSON_DEPTH - 1)}`;
    expect(parseMessage([enc({ ...header(), x_ok: JSON.parse(atLimit) }), Buffer.alloc(1)], limits, 0).ok).toBe(true);
  });

  it('the schema file is valid draft 2020-12 and agrees with parseMessage on a valid header', () => {
    const schema = JSON.parse(readFileSync(new URL('../../docs/schemas/tile-header.schema.json', import.meta.url), 'utf8'));
    const ajv = new Ajv2020({ strict: false, validateFormats: false });
    const validate = ajv.compile(schema);
    expect(validate(header())).toBe(true);
    expect(validate({ ...header(), extra_field: 1 })).toBe(false);
  });
});
