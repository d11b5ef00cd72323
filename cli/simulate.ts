import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig, type FocusdConfig } from '../config/load.js';
import { createLogger } from '../core/logger.js';
import { freePort } from '../core/net.js';
import { Daemon, type DaemonOptions } from '../daemon/daemon.js';
import { createScorer } from '../models/index.js';
import { oracleLabel, oracleScorerFactory, parseOracleSpec, type OracleSpec } from '../sim/oracle.js';
import { INSTRUMENTS, isInstrument, type InstrumentName } from '../sim/instruments.js';
import { textTable, slideLine } from '../sim/report.js';
import type { SceneSource } from '../sim/render.js';
import { imageSceneSource, loadTissueImages, resolveTissueSpec, stackSceneSource, type TissueImage } from '../sim/tissue-images.js';
import { runSimulation, type DaemonFactory, type DaemonHandle, type SimulationReport } from '../sim/run.js';
import type { ScanEvent } from '../sim/scanner.js';
import { outputFileProblem, splitConfigArgs } from './args.js';
import { DEFAULT_FIT_RANGE_UM } from '../models/calibrate-stack.js';
import { calibrateOnSimulatedStack, calibrationLines, type SimCalibration } from './sim-calibrate.js';

const USAGE = `usage: focusd simulate [options]

A virtual scanner in front of focusd: procedural slides with a true focus surface (tilt, curvature, drift,
isolated blurs) scanned tile by tile over ZeroMQ; the daemon's MQTT commands are obeyed; the same scan is run
without feedback for comparison. By default a daemon is started in-process (embedded MQTT broker).

  --instrument NAME   ${INSTRUMENTS.join('|')}|all   (default matching)
  --slides N          slides in a row on the same daemon (default 3)
  --pattern P         router|pull (default router)
  --no-feedback       only the scan without feedback
  --feedback-only     only the scan with feedback
  --seed N            slides and tissue are drawn from it (default 1)
  --cols N --rows N   tiles per slide (default 8 x 6)
  --width N --height N  tile size in pixels (default 640 x 320, 0.22 µm/px)
  --restart-between-slides  stop the daemon after every slide and start a new one on the same state (in-process)
  --calibrate         first take a focus stack on the instrument (other tissue than the slides, 8 positions,
                      z −6..+6 µm in 0.5 µm), calibrate the bundle on it as \`focusd calibrate\` does, and scan with
                      the calibrated bundle (scoring.model); the report says what the calibration decided.
                      With --tissue the stack's positions are crops of those images (other offsets and
                      orientations than the slides' tiles get, not other images)
  --calibration-fit-range UM  \`focusd calibrate --fit-range\` for that stack (default 3: the in/out boundary's
                      range; beyond −3.5 µm the shipped model's sign flips on the matching optics)
  --calibration-dir DIR  keep each instrument's stack and calibrated bundle in DIR/<instrument> (default: a
                      temporary dir, removed at the end)
  --json FILE         write the full report (per slide, per tile, every move)
  --tissue SPEC       tissue tiles cropped from real in-focus images instead of procedural ones: image files or
                      folders, comma separated, or \`heldout\` (the training code's held-out images in the development
                      data, ../shared/data/infocus); still blurred by the instrument's optics at the true defocus
  --endpoint URL      scan against a running daemon at this ZeroMQ endpoint instead (its MQTT url, base topic and
                      scanner id are read from --config / the environment / --mqtt-url, as the daemon reads them)
  --oracle SPEC       score with an oracle instead of the model (in-process daemon only): the true defocus,
                      distorted as SPEC says: perfect, or gain=G,sd=S,sign=true|none|P (sim/oracle.ts). What the
                      loop would do with a model of that quality; tissue and sharpness still come from the scorer
  --verbose           one line per acquisition and per command
  --config FILE, --scorer, --model, --tolerance-um, --dry-run, ...  the daemon's configuration (focusd check-config --schema)`;

export interface InProcessOptions {
  /** how the user's configuration is loaded (loadConfig); the factory adds its own ports and state dir. */
  load: { file: string | null; args: string[]; env: NodeJS.ProcessEnv; overrides?: Record<string, unknown> };
  pattern: 'router' | 'pull';
  /** the daemon's log level (default: its configuration's log.level). */
  logLevel?: string;
  /**
   * keep each run's state (SQLite: history, outbox, what the daemon learned) in `<stateDir>/<run>` across daemons
   * of the factory, e.g. across restarts between slides; default: a fresh temporary dir per daemon, removed at stop.
   */
  stateDir?: string;
  /** the daemon's scorer instead of scoring.scorer's (the oracle). */
  scorer?: DaemonOptions['scorer'];
}

/**
 * Starts a fresh daemon per run (its own state dir and ports; the embedded broker when mqtt.url is `embedded`),
 * configured as `config` says otherwise.
 */
export function inProcessDaemons(o: InProcessOptions): DaemonFactory {
  return async (run): Promise<DaemonHandle> => {
    const base = loadConfig(o.load);
    // its own scanner id (MQTT client id, topics, learned state) for the run without feedback: on a shared broker
    // two daemons with one client id would keep throwing each other off
    const scannerId = run === 'feedback' ? base.scanner.id : `${base.scanner.id}-nofeedback`;
    const embedded = base.mqtt.url === 'embedded';
    const level = o.logLevel ?? base.log.level;
    // ingest on port 0 (the daemon reports what it bound); the embedded broker needs a port of its own, and a free
    // port can be taken by another process before the broker binds it: then try again with another
    for (let tries = 1; ; tries++) {
      const keep = o.stateDir !== undefined;
      const stateDir = keep ? join(o.stateDir!, run) : mkdtempSync(join(tmpdir(), 'focusd-sim-'));
      if (keep) mkdirSync(stateDir, { recursive: true });
      const mqttPort = embedded ? await freePort() : 0;
      const overrides: Record<string, unknown> = {
        'scanner.id': scannerId,
        ...(run === 'feedback' || !base.mqtt.clientId ? {} : { 'mqtt.clientId': `${base.mqtt.clientId}-nofeedback` }),
        'ingest.endpoint': 'tcp://127.0.0.1:0',
        'ingest.pattern': o.pattern,
        'store.dir': stateDir,
        'reports.schedule': '',
        'mqtt.statsIntervalS': 0,
        ...(embedded ? { 'mqtt.embedded.port': mqttPort } : {}),
      };
      const config = loadConfig({ ...o.load, overrides: { ...o.load.overrides, ...overrides } });
      const daemon = new Daemon(config, {
        logger: createLogger({ level, format: 'pretty', stream: process.stderr }),
        env: {},
        ...(o.scorer ? { scorer: o.scorer } : {}),
      });
      try {
        await daemon.start();
      } catch (err) {
        if (!keep) rmSync(stateDir, { recursive: true, force: true });
        if (embedded && tries < 3 && /EADDRINUSE|address already in use/i.test((err as Error).message)) continue;
        throw err;
      }
      return handle(daemon, config, embedded ? `mqtt://127.0.0.1:${mqttPort}` : config.mqtt.url, keep ? null : stateDir, o.pattern);
    }
  };
}

function handle(daemon: Daemon, config: FocusdConfig, mqttUrl: string, removeAtStop: string | null, pattern: 'router' | 'pull'): DaemonHandle {
  const st = daemon.status();
  return {
    endpoint: daemon.ingestEndpoint,
    pattern,
    mqttUrl,
    baseTopic: config.resolved.baseTopic,
    scanner: config.scanner.id,
    info: { in_process: true, engine: st.engine, model: st.model, scorer: config.scoring.scorer },
    stop: async () => {
      await daemon.stop('simulation finished');
      if (removeAtStop) rmSync(removeAtStop, { recursive: true, force: true });
    },
  };
}

/** An external daemon: the same one for both runs; the run without feedback uses its own scanner id. */
export function externalDaemon(config: FocusdConfig, endpoint: string, pattern: 'router' | 'pull'): DaemonFactory {
  return async (run) => ({
    endpoint,
    pattern,
    mqttUrl: config.mqtt.url === 'embedded' ? `mqtt://127.0.0.1:${config.mqtt.embedded.port}` : config.mqtt.url,
    baseTopic: config.resolved.baseTopic,
    // the daemon keeps what it learns per scanner: the scan without feedback must not teach the other one
    scanner: run === 'feedback' ? config.scanner.id : `${config.scanner.id}-nofeedback`,
    info: { in_process: false },
    stop: async () => undefined,
  });
}

const fmt = (v: number | null | undefined) => (v === null || v === undefined ? '   –  ' : `${v >= 0 ? '+' : ''}${v.toFixed(2)}`);

/** One line per acquisition / command (--verbose, and the demo). */
export function eventLine(run: string, e: ScanEvent): string {
  if (e.type === 'acquisition') {
    const a = e.acq;
    return (
      `    ${run === 'feedback' ? '' : '[no feedback] '}r${e.tile.row}c${e.tile.col} #${a.attempt}${a.probe ? ' probe' : ''} z ${a.z_um.toFixed(2)}: ` +
      `true defocus ${fmt(a.defocus_um)} µm → ${String(a.verdict).padEnd(12)} scored ${fmt(a.scored_defocus_um)} µm (sign conf ${a.sign_confidence ?? '–'})`
    );
  }
  const a = e.action;
  return `    ${e.executed ? '▶' : '·'} ${a.type}${a.probe ? ' (probe)' : ''} tile ${a.tile.index}: ${e.note} — ${a.reason}`;
}

/** `focusd simulate`. */
export async function simulateMain(argv: string[]): Promise<number> {
  let split;
  try {
    split = splitConfigArgs(argv);
  } catch (err) {
    process.stderr.write(`focusd simulate: ${(err as Error).message}\n`);
    return 64;
  }
  let values;
  try {
    ({ values } = parseArgs({
      args: split.rest,
      options: {
        instrument: { type: 'string', default: 'matching' },
        slides: { type: 'string', default: '3' },
        pattern: { type: 'string', default: 'router' },
        'no-feedback': { type: 'boolean', default: false },
        'feedback-only': { type: 'boolean', default: false },
        seed: { type: 'string', default: '1' },
        cols: { type: 'string', default: '8' },
        rows: { type: 'string', default: '6' },
        width: { type: 'string', default: '640' },
        height: { type: 'string', default: '320' },
        json: { type: 'string' },
        tissue: { type: 'string' },
        endpoint: { type: 'string' },
        verbose: { type: 'boolean', default: false },
        'restart-between-slides': { type: 'boolean', default: false },
        calibrate: { type: 'boolean', default: false },
        'calibration-fit-range': { type: 'string', default: String(DEFAULT_FIT_RANGE_UM) },
        'calibration-dir': { type: 'string' },
        oracle: { type: 'string' },
        help: { type: 'boolean', default: false },
      },
    }));
  } catch (err) {
    process.stderr.write(`focusd simulate: ${(err as Error).message}\n\n${USAGE}\n`);
    return 64;
  }
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const bad = (msg: string) => {
    process.stderr.write(`focusd simulate: ${msg}\n`);
    return 64;
  };
  const instruments: InstrumentName[] = values.instrument === 'all' ? [...INSTRUMENTS] : isInstrument(values.instrument!) ? [values.instrument] : [];
  if (!instruments.length) return bad(`--instrument: "${values.instrument}" is not one of ${INSTRUMENTS.join(', ')}, all`);
  if (values.pattern !== 'router' && values.pattern !== 'pull') return bad(`--pattern: "${values.pattern}" is not router or pull`);
  const ints: Record<string, number> = {};
  for (const k of ['slides', 'seed', 'cols', 'rows', 'width', 'height'] as const) {
    const n = Number(values[k]);
    if (!Number.isInteger(n) || n < (k === 'seed' ? 0 : 1)) return bad(`--${k}: "${values[k]}" is not a ${k === 'seed' ? 'non-negative' : 'positive'} integer`);
    ints[k] = n;
  }
  if (values['no-feedback'] && values['feedback-only']) return bad('--no-feedback and --feedback-only exclude each other');
  if (values.json !== undefined) {
    const problem = outputFileProblem(values.json);
    if (problem) return bad(`--json: ${problem}`);
  }
  const calibrateFirst = values.calibrate!;
  const fitRange = Number(values['calibration-fit-range']);
  if (!(fitRange > 0)) return bad(`--calibration-fit-range: "${values['calibration-fit-range']}" is not a positive number`);
  if (calibrateFirst && values.endpoint) return bad('--calibrate needs the in-process daemon (no --endpoint): it scans with the bundle it calibrated');
  let oracle: OracleSpec | null = null;
  if (values.oracle !== undefined) {
    try {
      oracle = parseOracleSpec(values.oracle);
    } catch (err) {
      return bad((err as Error).message);
    }
    if (values.endpoint) return bad('--oracle needs the in-process daemon (no --endpoint): it replaces its scorer');
    if (calibrateFirst) return bad('--oracle and --calibrate exclude each other: the oracle has no bundle to calibrate');
  }
  let config: FocusdConfig;
  const load = { file: split.configFile, args: split.configArgs, env: process.env };
  try {
    config = loadConfig(load);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`focusd simulate: ${err.message}\n`);
      return 78;
    }
    throw err;
  }
  const pattern = values.pattern;
  // the daemon's info lines would drown the simulator's; --log-level or a config file says otherwise
  const quietDaemon = !split.configFile && !split.configArgs.includes('--log-level') && !process.env.FOCUSD_LOG_LEVEL;
  const restart = values['restart-between-slides']!;
  if (restart && values.endpoint) return bad('--restart-between-slides needs the in-process daemon (no --endpoint)');
  // restarts keep the state (what the daemon learned) in one dir for the whole simulation
  const stateDir = restart ? mkdtempSync(join(tmpdir(), 'focusd-sim-state-')) : undefined;
  if (calibrateFirst && config.scoring.scorer !== 'cnn') return bad(`--calibrate calibrates a model bundle; the scorer is ${config.scoring.scorer}`);
  const daemonFor = (modelDir?: string): DaemonFactory =>
    values.endpoint
      ? externalDaemon(config, values.endpoint, pattern)
      : inProcessDaemons({
          load: modelDir ? { ...load, overrides: { 'scoring.model': modelDir } } : load,
          pattern,
          ...(quietDaemon ? { logLevel: 'warn' } : {}),
          ...(stateDir ? { stateDir } : {}),
          ...(oracle ? { scorer: oracleScorerFactory(oracle, createScorer) } : {}),
        });
  // the tissue images are checked before anything is written
  let scenes: SceneSource | undefined;
  let tissueImages: TissueImage[] | undefined;
  if (values.tissue !== undefined) {
    try {
      tissueImages = await loadTissueImages(resolveTissueSpec(values.tissue));
      scenes = imageSceneSource(tissueImages, { width: ints.width!, height: ints.height! });
    } catch (err) {
      return bad((err as Error).message);
    }
  }
  const calRoot = calibrateFirst ? (values['calibration-dir'] ?? mkdtempSync(join(tmpdir(), 'focusd-sim-cal-'))) : null;
  const out = (s: string) => process.stdout.write(s + '\n');
  const reports: SimulationReport[] = [];
  for (const name of instruments) {
    out(`instrument ${name}: ${ints.slides} slides of ${ints.cols}x${ints.rows} tiles (${ints.width}x${ints.height} px), seed ${ints.seed}, ${pattern}`);
    if (oracle) out(`  scored by the oracle (${oracleLabel(oracle)}), not by the model: the true defocus, distorted as --oracle says`);
    try {
      let calibration: SimCalibration | undefined;
      if (calRoot) {
        calibration = await calibrateOnSimulatedStack({
          instrument: name,
          dir: join(calRoot, name),
          modelDir: config.resolved.modelDir,
          seed: ints.seed!,
          fitRangeUm: fitRange,
          // with --tissue the stack is crops of the same images at other offsets and orientations (other seeds)
          ...(tissueImages ? { scene: stackSceneSource(tissueImages), tissue: values.tissue } : {}),
        });
        for (const l of calibrationLines(calibration)) out(l);
      }
      reports.push(
        await runSimulation({
          ...(calibration ? { calibration: calibration as unknown as Record<string, unknown> } : {}),
          ...(oracle ? { oracle: oracleLabel(oracle) } : {}),
          instrument: name,
          slides: ints.slides!,
          seed: ints.seed!,
          cols: ints.cols,
          rows: ints.rows,
          width: ints.width,
          height: ints.height,
          toleranceUm: config.decision.toleranceUm,
          runs: values['no-feedback'] ? ['no_feedback'] : values['feedback-only'] ? ['feedback'] : ['no_feedback', 'feedback'],
          daemon: daemonFor(calibration?.bundle),
          restartBetweenSlides: restart,
          ...(scenes ? { scenes, tissue: values.tissue } : {}),
          onSlide: (run, s) => out(slideLine(run === 'feedback' ? 'feedback' : 'no feedback', s)),
          onEvent: values.verbose ? (run, e) => out(eventLine(run, e)) : undefined,
        }),
      );
    } catch (err) {
      process.stderr.write(`focusd simulate: instrument ${name}: ${(err as Error).stack ?? String(err)}\n`);
      if (calRoot && !values['calibration-dir']) rmSync(calRoot, { recursive: true, force: true });
      return 1;
    } finally {
      // every instrument is a new instrument: nothing learned on one may carry to the next
      if (stateDir) rmSync(stateDir, { recursive: true, force: true });
    }
  }
  if (calRoot && !values['calibration-dir']) rmSync(calRoot, { recursive: true, force: true });
  out('');
  out(textTable(reports));
  // a daemon in dry-run mode publishes its commands marked dry_run; the scanner does not execute them
  const dry = reports.reduce((a, r) => a + (r.with_feedback?.total.dry_run_actions ?? 0), 0);
  if (dry > 0)
    process.stderr.write(`focusd simulate: the daemon is in dry-run mode (controller.dryRun or set_dry_run): its ${dry} commands were not executed, so "with feedback" is the scan without it\n`);
  if (values.json) {
    try {
      writeFileSync(values.json, JSON.stringify({ schema: 'focusd/simulation-runs/1', argv, runs: reports }, null, 2) + '\n');
    } catch (err) {
      // checked at the start; what can still fail here (the disk filled, the folder went) is said, not thrown
      process.stderr.write(`focusd simulate: --json: could not write ${values.json}: ${(err as Error).message}\n`);
      return 74;
    }
    out(`\nwrote ${values.json}`);
  }
  return 0;
}
