import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from '../config/load.js';
import { isInstrument, INSTRUMENTS } from '../sim/instruments.js';
import { slideLine, textTable } from '../sim/report.js';
import { runSimulation } from '../sim/run.js';
import { eventLine, inProcessDaemons } from './simulate.js';

/**
 * `focusd demo`: the closed loop in one command. A virtual scanner (sim/) scans a procedural slide whose true focus
 * tilts, curves, drifts and has isolated blurs; every tile goes to focusd over ZeroMQ (router), focusd's commands
 * come back over the embedded MQTT broker and are obeyed; then the yield with focusd is set against the same scan
 * with its commands ignored. `focusd simulate` is the same with every option.
 */
const DEMO_USAGE = `usage: focusd demo [options]   (npm run demo -- [options])

The closed loop in one command: daemon + embedded MQTT broker + a virtual scanner that obeys its commands, then
the yield with and without focusd.

  --scorer cnn|classical   scorer (default cnn, the shipped model)
  --instrument NAME        ${INSTRUMENTS.join('|')} (default matching)
  --slides N               slides in a row (default 1)
  --seed N                 slides and tissue are drawn from it (default 1)
  --cols N --rows N        tiles per slide (default 8 x 6)
  --width N --height N     tile size in pixels (default 640 x 320)
  --quiet                  only the summary, not every acquisition and command
More options (other ZeroMQ patterns, real tissue, calibration, JSON output): focusd simulate --help
`;

export async function demoMain(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        scorer: { type: 'string', default: 'cnn' },
        instrument: { type: 'string', default: 'matching' },
        slides: { type: 'string', default: '1' },
        seed: { type: 'string', default: '1' },
        cols: { type: 'string', default: '8' },
        rows: { type: 'string', default: '6' },
        // the model reads 320x320 patches at 0.22 µm/px: two per tile, and the demo renders each in a fraction of a second
        width: { type: 'string', default: '640' },
        height: { type: 'string', default: '320' },
        quiet: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    process.stderr.write(`focusd demo: ${(err as Error).message}\n${DEMO_USAGE}`);
    return 64;
  }
  if (values.help) {
    process.stdout.write(DEMO_USAGE);
    return 0;
  }
  const out = (s: string) => process.stdout.write(s + '\n');
  const n: Record<string, number> = {};
  for (const k of ['slides', 'seed', 'cols', 'rows', 'width', 'height'] as const) {
    n[k] = Number(values[k]);
    if (!Number.isInteger(n[k]) || n[k]! < (k === 'seed' ? 0 : 1)) {
      process.stderr.write(`focusd demo: --${k}: "${values[k]}" is not a ${k === 'seed' ? 'non-negative' : 'positive'} integer\n`);
      return 64;
    }
  }
  const name = values.instrument!;
  if (!isInstrument(name)) {
    process.stderr.write(`focusd demo: --instrument: "${name}" is not one of ${INSTRUMENTS.join(', ')}\n`);
    return 64;
  }
  const load = {
    file: null,
    args: [],
    env: {},
    overrides: { 'scanner.id': 'demo-scanner', 'log.level': 'warn', 'log.format': 'pretty', 'mqtt.url': 'embedded', 'scoring.scorer': values.scorer },
  };
  let toleranceUm: number;
  try {
    toleranceUm = loadConfig(load).decision.toleranceUm;
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`focusd demo: ${err.message}\n`);
      return 78;
    }
    throw err;
  }
  out(`focusd demo — a virtual scanner in front of focusd (${values.scorer} scorer), instrument "${name}"`);
  out(
    `${n.slides} slide(s) of ${n.cols}x${n.rows} tiles (${n.width}x${n.height} px, 0.22 µm/px) of procedural tissue; the true focus tilts, curves, ` +
      `drifts from partway on and has isolated ±3 µm blurs; the scanner plans one flat z.`,
  );
  out(`each tile goes to focusd over ZeroMQ (router), its commands come back over the embedded MQTT broker and are obeyed;`);
  out(`then the same scan with the commands ignored (no feedback). Lines below: the scan with feedback as it happens.`);
  out('');
  const t0 = performance.now();
  const report = await runSimulation({
    instrument: name,
    slides: n.slides!,
    seed: n.seed!,
    cols: n.cols,
    rows: n.rows,
    width: n.width,
    height: n.height,
    toleranceUm,
    daemon: inProcessDaemons({ load, pattern: 'router' }),
    onEvent: values.quiet ? undefined : (run, e) => (run === 'feedback' ? out(eventLine(run, e)) : undefined),
    onSlide: (run, s) => out(slideLine(run === 'feedback' ? 'feedback' : 'no feedback', s)),
  });
  const on = report.with_feedback!.total;
  const off = report.without_feedback!.total;
  const d = report.with_feedback!.daemon;
  out('');
  out(textTable([report]));
  out('');
  out(`scorer ${String(d.scorer)} on ${String(d.engine)}, model ${JSON.stringify(d.model)}`);
  out(
    `yield (tissue tiles within ±${toleranceUm} µm): without focusd ${(off.yield * 100).toFixed(0)} %, with focusd ${(on.yield * 100).toFixed(0)} % ` +
      `(${on.acquisitions_per_tile.toFixed(2)} acquisitions per tile, ${on.wrong_way_moves} wrong-way moves) — ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return 0;
}
