// Malformed tile messages for the ingest fuzz suite (test/fuzz/): the committed corpus (test/fuzz/corpus/*.json,
// descriptions only; images are generated here) and a seeded mutation fuzzer over valid messages.
import { readdirSync, readFileSync } from 'node:fs';
import sharp from 'sharp';
import type { TileHeader } from '../../core/types.js';
import { encodePng, rng32, synthTile } from '../../sim/procedural.js';
import { bombPng } from './tiles.js';

/** A JSON value in the corpus that stands for a long string: {"repeat": "a", "times": 70000}. */
type Repeat = { repeat: string; times: number };

export interface CorpusCase {
  name: string;
  /** merged onto the base header; null deletes the key; {repeat, times} becomes a long string. */
  header?: Record<string, unknown>;
  /** the header frame as literal text, or hex bytes (spaces ignored), instead of the base header. */
  headerText?: string;
  headerHex?: string;
  /** [from, to]: a textual replacement in the serialised header (values JSON.stringify cannot produce, e.g. 1e309). */
  headerReplace?: [string, string];
  /** `key` set to `depth` levels of `open` (e.g. "[" or "{\"a\":") closed again around 0. */
  deep?: { key: string; depth: number; open: string };
  /** frame layout, default ["header", "payload"]. */
  frames?: Array<'header' | 'payload' | 'empty'>;
  payload?: {
    kind: 'raw' | 'zeros' | 'png' | 'jpeg' | 'bomb' | 'text';
    bytes?: number;
    width?: number;
    height?: number;
    trim?: number;
    truncate?: number;
    corrupt?: 'sof' | 'marker' | 'zeroed';
    text?: string;
  };
  /** the reply's reason, or "ok" for a verdict. */
  expect: string;
}

export interface FuzzMessage {
  name: string;
  frames: Buffer[];
  /** expected reason or "ok"; null when any answer is fine (mutants), as long as there is exactly one. */
  expect: string | null;
}

/** Width and height of the base tile: large enough for one classical patch (192 px), small enough to score fast. */
export const BASE_W = 400;
export const BASE_H = 300;

export function baseHeader(scanner: string, seq: number): TileHeader {
  return {
    v: 1,
    scanner,
    slide: 'fuzz-slide',
    scan: 'fuzz-scan',
    seq,
    tile: { index: seq, row: Math.floor(seq / 50), col: seq % 50 },
    stage_um: { x: 1000 + (seq % 50) * 88, y: 2000 + Math.floor(seq / 50) * 66, z: 1500 },
    pixel_size_um: 0.22,
    objective: '20x/0.8',
    acquired_at: '2026-12-01T08:00:00.000Z',
    attempt: 0,
    format: 'raw',
    width: BASE_W,
    height: BASE_H,
    pixel_type: 'RGB24',
  };
}

export interface Payloads {
  raw: Buffer;
  png: Buffer;
  jpeg: Buffer;
  bomb: Buffer;
}

/** The procedurally generated images every case is built from (a blurred tissue tile: it gets a real verdict). */
export async function makePayloads(): Promise<Payloads> {
  const t = synthTile({ width: BASE_W, height: BASE_H, seed: 1010, kind: 'tissue', defocusUm: 2.5 });
  const raw = Buffer.from(t.rgb);
  const png = await encodePng(t);
  const jpeg = await sharp(raw, { raw: { width: BASE_W, height: BASE_H, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
  return { raw, png, jpeg, bomb: await bombPng(20_000, 20_000) };
}

export function loadCorpus(dir: URL): Array<CorpusCase & { file: string }> {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .flatMap((f) => (JSON.parse(readFileSync(new URL(f, dir), 'utf8')) as { cases: CorpusCase[] }).cases.map((c) => ({ ...c, file: f })));
}

const expand = (v: unknown): unknown => {
  if (v && typeof v === 'object' && 'repeat' in v && 'times' in v) return (v as Repeat).repeat.repeat((v as Repeat).times);
  return v;
};

/** Builds the frames of one corpus case (header, payload; the router envelope is added by the sender). */
export function buildCase(c: CorpusCase, scanner: string, seq: number, p: Payloads): FuzzMessage {
  let headerBuf: Buffer;
  if (c.headerText !== undefined) headerBuf = Buffer.from(c.headerText);
  else if (c.headerHex !== undefined) headerBuf = Buffer.from(c.headerHex.replace(/\s+/g, ''), 'hex');
  else {
    const h: Record<string, unknown> = { ...baseHeader(scanner, seq) };
    for (const [k, v] of Object.entries(c.header ?? {})) {
      if (v === null) delete h[k];
      else h[k] = expand(v);
    }
    let text = JSON.stringify(h);
    if (c.deep) {
      const { key, depth, open } = c.deep;
      const close = open === '[' ? ']' : '}';
      const nested = `${open.repeat(depth)}0${close.repeat(depth)}`;
      text = text.slice(0, -1) + `,${JSON.stringify(key)}:${nested}}`;
      // a deep value replaces an existing key (e.g. slide): drop the original so the JSON has one
      if (key in h) text = text.replace(`${JSON.stringify(key)}:${JSON.stringify(h[key])},`, '');
    }
    if (c.headerReplace) {
      if (!text.includes(c.headerReplace[0])) throw new Error(`corpus case "${c.name}": "${c.headerReplace[0]}" not in ${text}`);
      text = text.replace(c.headerReplace[0], c.headerReplace[1]);
    }
    headerBuf = Buffer.from(text);
  }
  const payload = buildPayload(c.payload, p);
  const layout = c.frames ?? ['header', 'payload'];
  const frames = layout.map((f) => (f === 'header' ? headerBuf : f === 'payload' ? payload : Buffer.alloc(0)));
  return { name: c.name, frames, expect: c.expect };
}

function buildPayload(spec: CorpusCase['payload'], p: Payloads): Buffer {
  if (!spec) return Buffer.alloc(0);
  let b: Buffer;
  switch (spec.kind) {
    case 'raw':
      b = spec.width ? synthTile({ width: spec.width, height: spec.height!, seed: 1011, kind: 'tissue', defocusUm: 2 }).rgb : p.raw;
      break;
    case 'zeros':
      b = Buffer.alloc(spec.bytes ?? 0);
      break;
    case 'png':
      b = p.png;
      break;
    case 'bomb':
      b = p.bomb;
      break;
    case 'text':
      b = Buffer.from(spec.text ?? '');
      break;
    case 'jpeg':
      b = Buffer.from(p.jpeg);
      if (spec.corrupt === 'sof') {
        // the frame header (SOF0): height and width follow its length and precision
        let i = 2;
        while (b[i + 1] !== 0xc0) i += 2 + b.readUInt16BE(i + 2);
        b.writeUInt16BE(6000, i + 5);
        b.writeUInt16BE(6000, i + 7);
      } else if (spec.corrupt === 'marker') b[b.length - 2000] = 0xff;
      else if (spec.corrupt === 'zeroed') b.fill(0, b.length - 2000, b.length - 1936);
      break;
  }
  if (spec.trim) b = b.subarray(0, b.length - spec.trim);
  if (spec.truncate) b = b.subarray(0, Math.floor(b.length * spec.truncate));
  return b;
}

// ---- mutation fuzzer ------------------------------------------------------------------------------------------

const deepArray = (n: number) => JSON.parse(`${'['.repeat(n)}${']'.repeat(n)}`) as unknown;

/** Values that have broken parsers before: wrong types, edges of every range, control characters, nesting. */
const INTERESTING: Array<() => unknown> = [
  () => null,
  () => true,
  () => 0,
  () => -1,
  () => 1,
  () => 0.5,
  () => 1e-300,
  () => 1e308,
  () => -1e308,
  () => 2 ** 31,
  () => 2 ** 53 + 2,
  () => 65535,
  () => 65536,
  () => 0.22,
  () => 0.44,
  () => 1000,
  () => '',
  () => 'x',
  () => '\u0000',
  () => '\u001b[2J|<script>',
  () => 'a'.repeat(300),
  () => '2026-13-45T99:99:99Z',
  () => [],
  () => ({}),
  () => deepArray(20),
  () => deepArray(40),
  () => ({ index: 1, row: 1, col: 1 }),
  () => ({ x: 1e9, y: 0, z: 0 }),
];

/** Every key path of a header: top-level keys and one level below (tile.index, stage_um.z). */
function paths(h: Record<string, unknown>): string[][] {
  const out: string[][] = [];
  for (const [k, v] of Object.entries(h)) {
    out.push([k]);
    if (v && typeof v === 'object' && !Array.isArray(v)) for (const k2 of Object.keys(v)) out.push([k, k2]);
  }
  return out;
}

/**
 * `n` mutants of valid raw and PNG messages, from one seed (the same seed gives the same messages). Each applies one
 * to three operators: replace a value, delete or add a key, edit the header bytes, damage the payload, change the
 * frame layout or the format.
 */
export function* mutants(seed: number, n: number, scanner: string, firstSeq: number, p: Payloads): Generator<FuzzMessage> {
  const rnd = rng32(seed);
  const int = (k: number) => Math.floor(rnd() * k);
  const pick = <T>(a: readonly T[]): T => a[int(a.length)]!;
  for (let i = 0; i < n; i++) {
    const png = rnd() < 0.3;
    const h = JSON.parse(JSON.stringify({ ...baseHeader(scanner, firstSeq + i), ...(png ? { format: 'png' } : {}) })) as Record<string, unknown>;
    if (png) for (const k of ['width', 'height', 'pixel_type']) delete h[k];
    let payload: Buffer = png ? p.png : p.raw;
    let headerText: string | null = null;
    let layout: Array<'h' | 'p' | 'e'> = ['h', 'p'];
    const ops: string[] = [];
    const count = 1 + int(3);
    for (let j = 0; j < count; j++) {
      const op = pick(['value', 'value', 'value', 'delete', 'add', 'bytes', 'payload', 'frames', 'format'] as const);
      ops.push(op);
      if (op === 'value') {
        const path = pick(paths(h));
        const v = pick(INTERESTING)();
        if (path.length === 1) h[path[0]!] = v;
        else (h[path[0]!] as Record<string, unknown>)[path[1]!] = v;
      } else if (op === 'delete') delete h[pick(Object.keys(h))];
      else if (op === 'add') h[pick(['x_vendor', 'x_deep', 'extra', 'Seq', 'stride', 'significant_bits'])] = pick(INTERESTING)();
      else if (op === 'bytes') {
        const t = Buffer.from(headerText ?? JSON.stringify(h));
        const k = int(t.length);
        const e = int(4);
        let edited: Buffer;
        if (e === 0) {
          edited = Buffer.from(t);
          edited[k] = edited[k]! ^ (1 << int(8));
        } else if (e === 1) edited = Buffer.concat([t.subarray(0, k), Buffer.from([int(256)]), t.subarray(k)]);
        else if (e === 2) edited = Buffer.concat([t.subarray(0, k), t.subarray(k + 1)]);
        else edited = t.subarray(0, k);
        headerText = edited.toString('latin1');
      } else if (op === 'payload') {
        const e = int(3);
        if (e === 0) payload = payload.subarray(0, int(payload.length));
        else if (e === 1) payload = Buffer.concat([payload, Buffer.alloc(1 + int(64))]);
        else {
          payload = Buffer.from(payload);
          for (let f = 0; f < 8; f++) {
            const at = int(payload.length);
            payload[at] = payload[at]! ^ (1 << int(8));
          }
        }
      } else if (op === 'frames') layout = pick([['h'], ['h', 'p', 'e'], ['e', 'p'], ['h', 'e'], ['h', 'p', 'p']] as Array<Array<'h' | 'p' | 'e'>>);
      else h.format = pick(['png', 'jpeg', 'tiff', 'raw', 'gif']);
    }
    // 'bytes' edits work on the text; a latin1 round trip keeps every byte as it was
    const headerBuf = headerText !== null ? Buffer.from(headerText, 'latin1') : Buffer.from(JSON.stringify(h));
    const frames = layout.map((f) => (f === 'h' ? headerBuf : f === 'p' ? payload : Buffer.alloc(0)));
    yield { name: `mutant ${seed}/${i} (${png ? 'png' : 'raw'}: ${ops.join(', ')})`, frames, expect: null };
  }
}
