// focusd replay: send a folder of tiles (or a manifest) to a daemon as a scanner would (sim/replay.ts does the work).
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { replay, type ReplayResult, type ReplaySummary, type SenderPattern } from '../sim/replay.js';

const REPLAY_USAGE = `usage: focusd replay [options] INPUT

Sends tiles to a focusd daemon the way a scanner does (docs/protocol.md). INPUT is a folder of .png/.jpg/.tif
files (sent in name order, laid out on a grid) or a JSON-lines manifest: one header per line plus "file" (relative
to the manifest), e.g. {"file":"t0001.png","tile":{"index":1,"row":0,"col":1},"stage_um":{"x":0,"y":0,"z":2.5}}.

options:
  --endpoint URL       daemon endpoint (default: ingest.endpoint of --config / FOCUSD_CONFIG / defaults)
  --pattern P          push (daemon pull), req or dealer (daemon router); default from the daemon config
  --rate N             tiles per second, 0 = as fast as the daemon takes them (default 0)
  --raw rgb24|bgr24    send decoded pixels instead of the file bytes
  --in-flight N        dealer: requests in flight (default 4)
  --timeout-ms N       reply / send timeout (default 30000)
  --scanner ID --slide ID --scan ID    header identifiers (default replay, slide-1, scan-<time>)
  --cols N             grid columns (default ceil(sqrt(tiles)))
  --pixel-size-um X    default 0.22      --objective TEXT   default "Plan-Apochromat 20x/0.8"
  --z-um X             stage z written into the headers (default 0)
  --limit N            send only the first N tiles (0, the default: all)
  --json               print one JSON line per tile and for the summary
  --quiet              print only the summary
  -c, --config FILE    daemon configuration to take the endpoint and pattern from`;

/** CLI entry of `focusd replay`; returns the exit code (0 ok, 1 some tiles failed, 64 usage). */
export async function replayMain(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        endpoint: { type: 'string' },
        pattern: { type: 'string' },
        rate: { type: 'string', default: '0' },
        raw: { type: 'string' },
        'in-flight': { type: 'string', default: '4' },
        'timeout-ms': { type: 'string', default: '30000' },
        scanner: { type: 'string', default: 'replay' },
        slide: { type: 'string', default: 'slide-1' },
        scan: { type: 'string' },
        cols: { type: 'string', default: '0' },
        'pixel-size-um': { type: 'string', default: '0.22' },
        objective: { type: 'string', default: 'Plan-Apochromat 20x/0.8' },
        'z-um': { type: 'string', default: '0' },
        limit: { type: 'string', default: '0' },
        json: { type: 'boolean', default: false },
        quiet: { type: 'boolean', default: false },
        config: { type: 'string', short: 'c' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    process.stderr.write(`focusd replay: ${(err as Error).message}\n\n${REPLAY_USAGE}\n`);
    return 64;
  }
  const v = parsed.values;
  if (v.help) {
    process.stdout.write(REPLAY_USAGE + '\n');
    return 0;
  }
  const usage = (msg: string) => {
    process.stderr.write(`focusd replay: ${msg}\n\n${REPLAY_USAGE}\n`);
    return 64;
  };
  if (parsed.positionals.length !== 1) return usage('give exactly one INPUT (folder or manifest)');
  const num = (name: string, s: string, min: number): number | null => {
    const x = Number(s);
    return Number.isFinite(x) && x >= min ? x : null;
  };
  const numbers: Record<string, number> = {};
  for (const [name, min] of [['rate', 0], ['in-flight', 1], ['timeout-ms', 1], ['cols', 0], ['pixel-size-um', 1e-9], ['z-um', -Infinity], ['limit', 0]] as const) {
    const x = num(name, String(v[name]), min);
    if (x === null) return usage(`--${name} must be a number${min > -Infinity ? ` >= ${min}` : ''}, got "${v[name]}"`);
    numbers[name] = x;
  }
  if (v.raw !== undefined && v.raw !== 'rgb24' && v.raw !== 'bgr24') return usage(`--raw must be rgb24 or bgr24, got "${v.raw}"`);

  let endpoint = v.endpoint;
  let pattern = v.pattern as SenderPattern | undefined;
  if (pattern !== undefined && !['push', 'req', 'dealer'].includes(pattern)) return usage(`--pattern must be push, req or dealer, got "${pattern}"`);
  if (!endpoint || !pattern) {
    // the daemon's own configuration is the one place its endpoint and pattern are defined
    try {
      const { loadConfig } = await import('../config/load.js');
      const cfg = loadConfig({ file: v.config ?? null, overrides: { 'scoring.scorer': 'classical' } });
      endpoint ??= cfg.ingest.endpoint;
      pattern ??= cfg.ingest.pattern === 'router' ? 'req' : 'push';
    } catch (err) {
      return usage(`cannot read the daemon configuration for the endpoint (${(err as Error).message}); pass --endpoint and --pattern`);
    }
  }

  const json = v.json;
  const quiet = v.quiet;
  const out = (s: string) => process.stdout.write(s + '\n');
  const ac = new AbortController();
  const onSig = () => ac.abort();
  process.once('SIGINT', onSig);
  let summary: ReplaySummary;
  try {
    summary = await replay({
      endpoint: endpoint!,
      pattern: pattern!,
      input: parsed.positionals[0]!,
      rate: numbers.rate!,
      raw: (v.raw as 'rgb24' | 'bgr24' | undefined) ?? null,
      scanner: v.scanner!,
      slide: v.slide!,
      scan: v.scan ?? `scan-${new Date().toISOString().replace(/[:.]/g, '-')}`,
      cols: Math.trunc(numbers.cols!),
      pixelSizeUm: numbers['pixel-size-um']!,
      objective: v.objective!,
      zUm: numbers['z-um']!,
      inFlight: Math.trunc(numbers['in-flight']!),
      timeoutMs: Math.trunc(numbers['timeout-ms']!),
      limit: Math.trunc(numbers.limit!),
      signal: ac.signal,
      onResult: quiet ? undefined : (r) => out(json ? JSON.stringify({ type: 'tile', ...r, header: undefined, tile: r.header.tile }) : describe(r)),
    });
  } catch (err) {
    process.stderr.write(`focusd replay: ${(err as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSig);
  }
  if (json) out(JSON.stringify({ type: 'summary', ...summary }));
  else {
    const replies = Object.entries(summary.replies).map(([k, n]) => `${k} ${n}`).join(', ') || (summary.pattern === 'push' ? 'none (push)' : 'none');
    out(`sent ${summary.sent} tiles to ${summary.endpoint} (${summary.pattern}) in ${summary.elapsed_s} s, ${summary.tiles_per_s} tiles/s`);
    out(`replies: ${replies}; errors: ${summary.errors}`);
    if (summary.undelivered) process.stderr.write(`focusd replay: nothing delivered: ${summary.undelivered}\n`);
  }
  const failed = summary.errors > 0 || Object.keys(summary.replies).some((k) => !['in_focus', 'out_of_focus', 'no_tissue'].includes(k));
  return failed ? 1 : 0;
}

function describe(r: ReplayResult): string {
  const where = `seq ${r.seq} ${basename(r.file)}`;
  if (r.error) return `${where}: ERROR ${r.error}`;
  if (!r.reply) return `${where}: sent`;
  if (!r.reply.ok) return `${where}: rejected ${r.reply.reason}: ${r.reply.detail} (${r.rtt_ms} ms)`;
  const d = r.reply.score.defocus_um;
  return `${where}: ${r.reply.verdict}${d === null ? '' : ` defocus ${d >= 0 ? '+' : ''}${d.toFixed(2)} µm`} (${r.rtt_ms} ms)`;
}
