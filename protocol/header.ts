// Wire protocol v1, frame 1 (the JSON tile header) and the cheap checks run on every message before any decoding.
// docs/protocol.md is the contract for senders; docs/schemas/tile-header.schema.json is the machine-readable part.
import { Ajv2020, type ErrorObject } from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import schema from '../docs/schemas/tile-header.schema.json' with { type: 'json' };
import { PIXEL_TYPES, type IncomingTile, type PixelType, type Rejection, type RejectReason, type TileHeader } from '../core/types.js';

export const PROTOCOL_VERSION = 1;

/**
 * Largest header frame accepted. A protocol constant (not a setting): real headers are a few hundred bytes, and this
 * keeps a garbage first frame from being JSON-parsed at full size.
 */
export const MAX_HEADER_BYTES = 64 * 1024;

/**
 * Deepest nesting of arrays/objects accepted in a header (vendor x_ fields included). Real headers nest 2 levels;
 * a depth of thousands fits in MAX_HEADER_BYTES and would make every later JSON.stringify of the header (reply,
 * error message, log line) throw, so it is refused by a byte scan before JSON.parse ever sees it.
 */
export const MAX_JSON_DEPTH = 32;

/**
 * How far a tile's pixel_size_um may be from the model's (either way). The patch grid is laid out in tile pixels
 * from this ratio: a µm/nm slip (1000x) would make a grid of ~10^10 cells. 4x covers 5x..40x objectives for a 20x
 * model; beyond it the model's scale is wrong for the tile anyway.
 */
export const MAX_PIXEL_SIZE_FACTOR = 4;

/** null when a tile of `tileUm` µm/px can be scored by a model of `modelUm` µm/px, else why not (invalid_header detail). */
export function pixelSizeProblem(tileUm: number, modelUm: number): string | null {
  const f = tileUm / modelUm;
  if (f >= 1 / MAX_PIXEL_SIZE_FACTOR && f <= MAX_PIXEL_SIZE_FACTOR) return null;
  return `/pixel_size_um ${tileUm} is ${f >= 1 ? f.toPrecision(3) + 'x larger' : (1 / f).toPrecision(3) + 'x smaller'} than the model's ${modelUm} µm/px; at most a factor of ${MAX_PIXEL_SIZE_FACTOR} either way can be scored (${(modelUm / MAX_PIXEL_SIZE_FACTOR).toPrecision(3)}..${(modelUm * MAX_PIXEL_SIZE_FACTOR).toPrecision(3)}); check the unit (µm, not nm)`;
}

export const BYTES_PER_PIXEL: Readonly<Record<PixelType, number>> = {
  GRAY8: 1,
  GRAY16: 2,
  RGB24: 3,
  BGR24: 3,
  RGB48: 6,
  BGR48: 6,
};

export interface MessageLimits {
  maxMessageBytes: number;
  maxPixels: number;
}

export type ParseResult = { ok: true; tile: IncomingTile } | { ok: false; rejection: Rejection };

// ajv-formats is CommonJS; under NodeNext its default export arrives as the module object
const addFormats = ((addFormatsModule as unknown as { default?: typeof addFormatsModule }).default ?? addFormatsModule) as unknown as (
  ajv: Ajv2020,
  formats: string[],
) => void;

// Compiled once: the validator is a pure function of the schema file (ajv keeps only the last call's errors on it,
// which are read synchronously right after each call).
const validateHeader = (() => {
  const ajv = new Ajv2020({ allErrors: true, strict: true, strictRequired: false });
  addFormats(ajv, ['date-time']);
  return ajv.compile<TileHeader>(schema);
})();

/** Row stride in bytes of a raw tile (explicit or tightly packed). */
export function rawStride(h: Pick<TileHeader, 'width' | 'stride' | 'pixel_type'>): number {
  return h.stride ?? (h.width ?? 0) * BYTES_PER_PIXEL[h.pixel_type ?? 'GRAY8'];
}

/**
 * Validates one message (frames after the ZeroMQ envelope was stripped: [header, payload]) without decoding the
 * image. Never throws: every problem becomes a Rejection with a stable reason code.
 */
export function parseMessage(frames: Buffer[], limits: MessageLimits, receivedAt: number): ParseResult {
  const bytes = frames.map((f) => f.length);
  const total = bytes.reduce((a, b) => a + b, 0);
  // best effort, so even rejected messages can be correlated by whoever reads the error topic or the reply
  let parsedHeader: unknown = undefined;
  const reject = (reason: RejectReason, detail: string): ParseResult => ({
    ok: false,
    rejection: { reason, detail, received: { ...(parsedHeader !== undefined ? { header: parsedHeader } : {}), frames: frames.length, bytes } },
  });

  const first = frames[0];
  if (first && first.length > 0 && first.length <= MAX_HEADER_BYTES) {
    const j = tryJson(first);
    if (j.ok) parsedHeader = j.value;
  }

  if (frames.length !== 2) {
    return reject('bad_frames', `expected 2 frames (header, payload), got ${frames.length}`);
  }
  if (total > limits.maxMessageBytes) {
    return reject('message_too_large', `message is ${total} bytes, limit is ${limits.maxMessageBytes} (ingest.maxMessageBytes)`);
  }
  const [headerFrame, payload] = frames as [Buffer, Buffer];
  if (headerFrame.length > MAX_HEADER_BYTES) {
    return reject('invalid_header', `header frame is ${headerFrame.length} bytes, at most ${MAX_HEADER_BYTES} allowed`);
  }
  const json = tryJson(headerFrame);
  if (!json.ok) return reject(json.tooDeep ? 'invalid_header' : 'bad_json', json.tooDeep ? json.error : `header frame is not UTF-8 JSON: ${json.error}`);
  const h = json.value;
  if (h === null || typeof h !== 'object' || Array.isArray(h)) {
    return reject('invalid_header', `header must be a JSON object, got ${h === null ? 'null' : Array.isArray(h) ? 'an array' : typeof h}`);
  }
  const v = (h as { v?: unknown }).v;
  if (v !== undefined && v !== PROTOCOL_VERSION) {
    return reject('unsupported_version', `header v=${JSON.stringify(v)}; this daemon speaks protocol v${PROTOCOL_VERSION}`);
  }
  if (!validateHeader(h)) {
    const errors = validateHeader.errors ?? [];
    const pt = (h as { pixel_type?: unknown }).pixel_type;
    if (typeof pt === 'string' && errors.some((e) => e.instancePath === '/pixel_type')) {
      // JSON.stringify escapes control characters; the cut keeps a 64 KiB string out of logs and replies
      return reject('unknown_pixel_type', `pixel_type ${JSON.stringify(pt.slice(0, 64))} is not one of ${PIXEL_TYPES.join(', ')}`);
    }
    return reject('invalid_header', describeErrors(errors));
  }
  const header = h;
  if (header.format === 'raw') {
    const width = header.width!;
    const height = header.height!;
    const pt = header.pixel_type!;
    const packed = width * BYTES_PER_PIXEL[pt];
    if (header.stride !== undefined && header.stride < packed) {
      return reject('invalid_header', `/stride ${header.stride} must be >= width * bytes per pixel of ${pt} (${packed})`);
    }
    if (header.significant_bits !== undefined && BYTES_PER_PIXEL[pt] % 2 !== 0) {
      return reject('invalid_header', `/significant_bits is only meaningful for 16-bit pixel types, not ${pt}`);
    }
    if (width * height > limits.maxPixels) {
      return reject('too_many_pixels', `${width}x${height} = ${width * height} pixels, limit is ${limits.maxPixels} (ingest.maxPixels)`);
    }
    const expected = height * rawStride(header);
    if (payload.length !== expected) {
      return reject(
        'payload_size_mismatch',
        `raw ${pt} ${width}x${height} with stride ${rawStride(header)} needs ${expected} payload bytes, got ${payload.length}`,
      );
    }
  } else if (header.significant_bits !== undefined) {
    return reject('invalid_header', '/significant_bits is only meaningful for raw 16-bit pixel types');
  }
  return { ok: true, tile: { header, payload, receivedAt, headerBytes: frames[0]!.length } };
}

type JsonResult = { ok: true; value: unknown } | { ok: false; error: string; tooDeep?: boolean };

/**
 * Whether `buf` (JSON text) nests arrays/objects deeper than `max`: one pass over the bytes, skipping strings (their
 * brackets do not count). Malformed text is left for JSON.parse to describe.
 */
export function jsonDepthExceeds(buf: Uint8Array, max: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i]!;
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped byte
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) {
      if (++depth > max) return true;
    } else if (c === 0x7d || c === 0x5d) depth--;
  }
  return false;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function tryJson(buf: Buffer): JsonResult {
  let text: string;
  try {
    text = utf8.decode(buf);
  } catch {
    return { ok: false, error: 'invalid UTF-8' };
  }
  if (jsonDepthExceeds(buf, MAX_JSON_DEPTH)) return { ok: false, error: `header nests arrays/objects deeper than ${MAX_JSON_DEPTH} levels`, tooDeep: true };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
}

/** ajv errors → "/stage_um/z must be number; /seq is required" (field first, so logs and replies name it). */
function describeErrors(errors: ErrorObject[]): string {
  const seen = new Set<string>();
  for (const e of errors) {
    // the if/then wrapper repeats what the "required" error under it already says
    if (e.keyword === 'if') continue;
    const path = e.instancePath || '';
    let msg: string;
    if (e.keyword === 'required') msg = `${path}/${(e.params as { missingProperty: string }).missingProperty} is required`;
    else if (e.keyword === 'additionalProperty' || e.keyword === 'additionalProperties')
      msg = `${path}/${(e.params as { additionalProperty: string }).additionalProperty} is not allowed (vendor fields must start with x_)`;
    else if (e.keyword === 'enum') msg = `${path || '/'} must be one of ${((e.params as { allowedValues: unknown[] }).allowedValues ?? []).join(', ')}`;
    else msg = `${path || '/'} ${e.message ?? e.keyword}`;
    seen.add(msg);
    if (seen.size >= 5) break;
  }
  return [...seen].join('; ') || 'header does not match the schema';
}
