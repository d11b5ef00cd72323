import { readFile, stat } from 'node:fs/promises';
import { extname } from 'node:path';
import { parseArgs } from 'node:util';
import { createContext } from '../core/context.js';
import { createLogger } from '../core/logger.js';
import { decide } from '../daemon/pipeline.js';
import type { TileFormat, TileHeader } from '../core/types.js';
import { decodeTile } from '../imaging/decode.js';
import { createScorer } from '../models/index.js';
import { loadCommandConfig, splitConfigArgs } from './args.js';

const FORMATS: Record<string, TileFormat> = { '.png': 'png', '.jpg': 'jpeg', '.jpeg': 'jpeg', '.tif': 'tiff', '.tiff': 'tiff' };
const CSV_COLUMNS = ['file', 'defocus_um', 'verdict', 'tissue_fraction', 'uncertainty_um', 'sign_confidence', 'patches', 'model', 'error'] as const;

/**
 * `focusd score PATH...`: scores image files offline with the configured scorer (the shipped model by default).
 * One JSON line (or CSV row) per file, in the order given; a file that cannot be read or decoded gets a line
 * with `error` and the exit code is 1, the other files are still scored.
 */
export async function scoreMain(argv: string[]): Promise<number> {
  let split, values, files: string[];
  try {
    split = splitConfigArgs(argv);
    const parsed = parseArgs({
      args: split.rest,
      allowPositionals: true,
      options: {
        format: { type: 'string', default: 'jsonl' },
        'pixel-size': { type: 'string' },
        help: { type: 'boolean' },
      },
    });
    values = parsed.values;
    files = parsed.positionals;
  } catch (err) {
    process.stderr.write(`focusd score: ${(err as Error).message}\n`);
    return 64;
  }
  if (values.help || files.length === 0) {
    process.stdout.write('usage: focusd score [--format jsonl|csv] [--pixel-size UM] [--scorer cnn|classical] [--model DIR] PATH...\n');
    return values.help ? 0 : 64;
  }
  // jsonl (one JSON object per line) is the documented name; json is accepted for it
  if (values.format === 'json') values.format = 'jsonl';
  if (values.format !== 'jsonl' && values.format !== 'csv') {
    process.stderr.write(`focusd score: --format must be jsonl or csv, not ${values.format}\n`);
    return 64;
  }
  // usage errors before the scorer starts (its worker would keep the process alive on an early return)
  const pixelSize = values['pixel-size'] !== undefined ? Number(values['pixel-size']) : null;
  if (pixelSize !== null && !(pixelSize > 0 && Number.isFinite(pixelSize))) {
    process.stderr.write(`focusd score: --pixel-size must be a positive number (µm per pixel), not ${JSON.stringify(values['pixel-size'])}\n`);
    return 64;
  }
  const config = loadCommandConfig('score', split);
  if (typeof config === 'number') return config;
  // logs go to stderr so stdout stays machine-readable
  const ctx = createContext(config, createLogger({ level: config.log.level === 'info' ? 'warn' : config.log.level, format: 'pretty', stream: process.stderr }));
  const scorer = createScorer(ctx);
  await scorer.start(new AbortController().signal);
  const out = process.stdout;
  if (values.format === 'csv') out.write(CSV_COLUMNS.join(',') + '\n');
  let failed = 0;
  try {
    for (const [i, file] of files.entries()) {
      let row: Record<string, unknown>;
      try {
        const format = FORMATS[extname(file).toLowerCase()];
        if (!format) {
          if ((await stat(file).catch(() => null))?.isDirectory()) throw new Error('is a directory: name the image files (e.g. DIR/*.png)');
          throw new Error(`unsupported file type "${extname(file)}" (png, jpeg, tiff)`);
        }
        const payload = await readFile(file);
        const header: TileHeader = {
          v: 1, scanner: 'offline', slide: 'offline', scan: 'offline', seq: i,
          tile: { index: i, row: 0, col: i }, stage_um: { x: 0, y: 0, z: 0 },
          // without --pixel-size the tile is assumed to be at the scorer's own pixel size (no rescaling)
          pixel_size_um: pixelSize ?? scorer.info.pixel_size_um,
          objective: 'unknown', acquired_at: new Date().toISOString(), attempt: 0, format,
        };
        const tile = await decodeTile({ header, payload, receivedAt: performance.now() }, { maxPixels: config.ingest.maxPixels });
        const s = await scorer.score(tile);
        row = {
          file,
          defocus_um: s.defocus_um === null ? null : round(s.defocus_um),
          verdict: decide(s, config.decision.toleranceUm),
          tissue_fraction: round(s.tissue_fraction, 4),
          uncertainty_um: s.uncertainty_um === null ? null : round(s.uncertainty_um),
          sign_confidence: s.sign_confidence === null ? null : round(s.sign_confidence, 3),
          patches: s.patches,
          model: `${s.model.name}@${s.model.version}`,
          focus_map: s.focus_map,
        };
      } catch (err) {
        failed++;
        row = { file, defocus_um: null, verdict: null, tissue_fraction: null, model: `${scorer.info.name}@${scorer.info.version}`, error: (err as Error).message };
      }
      if (values.format === 'csv') out.write(CSV_COLUMNS.map((c) => csvCell(row[c])).join(',') + '\n');
      else out.write(JSON.stringify(row) + '\n');
    }
  } finally {
    await scorer.stop();
  }
  return failed > 0 ? 1 : 0;
}

const round = (v: number, d = 3) => Math.round(v * 10 ** d) / 10 ** d;

function csvCell(v: unknown): string {
  if (v === null || v === undefined) return '';
  const s = String(v);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}
