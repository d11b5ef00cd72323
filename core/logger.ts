import winston from 'winston';

export type Logger = winston.Logger;

export interface LoggerOptions {
  level: string;
  format: 'auto' | 'json' | 'pretty';
  /** stream for tests; default stdout. */
  stream?: NodeJS.WritableStream;
}

/**
 * JSON lines on stdout (journald keeps them; `journalctl -o cat | jq` reads them), readable on a TTY.
 * Per-tile lines carry scanner/slide/tile/seq through `tileMeta()`.
 */
export function createLogger(opts: LoggerOptions): Logger {
  const stream = opts.stream ?? process.stdout;
  const pretty = opts.format === 'pretty' || (opts.format === 'auto' && Boolean((stream as NodeJS.WriteStream).isTTY));
  const format = pretty
    ? winston.format.combine(
        winston.format.timestamp({ format: 'HH:mm:ss.SSS' }),
        winston.format.errors({ stack: true }),
        winston.format.printf(({ timestamp, level, message, stack, ...meta }) => {
          const rest = Object.keys(meta).length ? ' ' + JSON.stringify(meta) : '';
          return `${timestamp} ${level.padEnd(5)} ${message}${rest}${stack ? '\n' + stack : ''}`;
        }),
      )
    : winston.format.combine(winston.format.timestamp(), winston.format.errors({ stack: true }), winston.format.json());
  return winston.createLogger({
    level: opts.level,
    format,
    transports: [new winston.transports.Stream({ stream })],
  });
}

/**
 * The fields every per-tile log line carries. Headers of rejected messages are whatever the sender sent, so only
 * scalars are passed on (strings cut to 200 characters): an object here could be too deep or too large to log.
 */
export function tileMeta(h: { scanner?: unknown; slide?: unknown; tile?: { index?: unknown } | unknown; seq?: unknown; attempt?: unknown }) {
  const tile = h.tile && typeof h.tile === 'object' ? (h.tile as { index?: unknown }).index : undefined;
  return { scanner: scalar(h.scanner), slide: scalar(h.slide), tile: scalar(tile), seq: scalar(h.seq), attempt: scalar(h.attempt) };
}

function scalar(v: unknown): string | number | boolean | null | undefined {
  if (typeof v === 'string') return v.length > 200 ? `${v.slice(0, 200)}…` : v;
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return v;
  return `(${Array.isArray(v) ? 'array' : typeof v})`;
}
