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

/** The fields every per-tile log line carries. */
export function tileMeta(h: { scanner?: unknown; slide?: unknown; tile?: { index?: unknown } | unknown; seq?: unknown; attempt?: unknown }) {
  const tile = h.tile && typeof h.tile === 'object' ? (h.tile as { index?: unknown }).index : undefined;
  return { scanner: h.scanner, slide: h.slide, tile, seq: h.seq, attempt: h.attempt };
}
