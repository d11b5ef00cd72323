/**
 * Scenario runner of the virtual scanner: one instrument, N slides in a row on the same daemon (what it learns
 * on one slide it keeps for the next), once with feedback (commands obeyed) and once without (the same slides,
 * the same commands received and ignored: what the scan would be without focusd), each run on its own daemon.
 * The daemon comes from a factory, so this folder never imports daemon/ (cli/simulate.ts starts one in-process,
 * tests start theirs, or the factory hands back an external one).
 */
import { DEFAULT_FEED_TIMINGS, MqttFeed, type FeedTimings } from './feed.js';
import { instrument, instrumentOptics, type InstrumentName } from './instruments.js';
import { TileRenderer, type SceneSource } from './render.js';
import { totalOf, VirtualScanner, type ScanCounts, type ScanEvent, type SlideResult } from './scanner.js';
import { VirtualSlide } from './slide.js';

export type RunKind = 'feedback' | 'no_feedback';

/** A daemon to scan against. */
export interface DaemonHandle {
  /** ZeroMQ endpoint the daemon's ingest is bound to. */
  endpoint: string;
  pattern: 'router' | 'pull';
  mqttUrl: string;
  baseTopic: string;
  /** scanner id the tiles carry (the daemon keeps its per-instrument state under it). */
  scanner: string;
  /** what the report says about it (engine, model, ...). */
  info?: Record<string, unknown>;
  stop(): Promise<void>;
}

export type DaemonFactory = (run: RunKind) => Promise<DaemonHandle>;

export interface SimulationOptions {
  instrument: InstrumentName;
  slides: number;
  seed: number;
  /** which runs: both (default), only with feedback, only without. */
  runs?: RunKind[];
  daemon: DaemonFactory;
  cols?: number;
  rows?: number;
  width?: number;
  height?: number;
  toleranceUm?: number;
  timings?: Partial<FeedTimings>;
  /** makes the slide ids new to a daemon that already saw a run (default: time-based). */
  tag?: string;
  onEvent?: (run: RunKind, e: ScanEvent) => void;
  onSlide?: (run: RunKind, r: SlideResult) => void;
  /**
   * stop each run's daemon after every slide and take a new one from the factory before the next (a factory that
   * keeps the state dir tests that what the daemon learned survives a restart; one that kills it, a crash).
   */
  restartBetweenSlides?: boolean;
  /** shared between runs so the scan without feedback and the first pass with it render each image once. */
  renderer?: TileRenderer;
  /** tissue scenes from real images (sim/tissue-images.ts) instead of procedural ones; `tissue` names them in the report. */
  scenes?: SceneSource;
  tissue?: string;
  /** the daemon scans with a bundle calibrated on this instrument: what the calibration decided (for the report). */
  calibration?: Record<string, unknown>;
  /** the daemon scores with the oracle (sim/oracle.ts): the scanner sends the truth, the report names the oracle. */
  oracle?: string;
}

export interface RunReport {
  feedback: boolean;
  daemon: Record<string, unknown>;
  slides: SlideResult[];
  total: ScanCounts;
  /** slides after the first: what the daemon does once it has seen this instrument. */
  after_first: ScanCounts | null;
}

export interface SimulationReport {
  schema: 'focusd/simulation/1';
  instrument: InstrumentName;
  instrument_description: string;
  pattern: 'router' | 'pull';
  seed: number;
  grid: { cols: number; rows: number };
  /** where tissue tiles come from: procedural, or the real images named. */
  tissue: string;
  tile: { width: number; height: number; pixel_size_um: number };
  tolerance_um: number;
  started_at: string;
  time_s: number;
  render: { renders: number; cache_hits: number; render_s: number };
  with_feedback: RunReport | null;
  without_feedback: RunReport | null;
  /** set when the daemons scanned with a bundle calibrated on a focus stack of this instrument (focusd simulate --calibrate). */
  calibration?: Record<string, unknown>;
  /** set when the daemons scored with the oracle (focusd simulate --oracle): its spec. */
  oracle?: string;
}

/** Stops a run's scanner, feed and daemon (each even when another fails); returns the failures. */
async function disconnect(s: { scanner: VirtualScanner | null; feed: MqttFeed | null; daemon: DaemonHandle | null }): Promise<unknown[]> {
  const failures: unknown[] = [];
  for (const stop of [() => s.scanner?.stop(), () => s.feed?.stop(), () => s.daemon?.stop()]) {
    try {
      await stop();
    } catch (err) {
      failures.push(err);
    }
  }
  s.scanner = null;
  s.feed = null;
  s.daemon = null;
  return failures;
}

/** Seed of the i-th slide of a simulation. */
export function slideSeed(seed: number, i: number): number {
  return seed * 1000 + i + 1;
}

export async function runSimulation(o: SimulationOptions): Promise<SimulationReport> {
  const started = new Date();
  const t0 = performance.now();
  const cols = o.cols ?? 8;
  const rows = o.rows ?? 6;
  const width = o.width ?? 640;
  const height = o.height ?? 320;
  const tol = o.toleranceUm ?? 1;
  const runs = o.runs ?? ['no_feedback', 'feedback'];
  const tag = o.tag ?? Date.now().toString(36);
  const renderer = o.renderer ?? new TileRenderer(instrumentOptics(o.instrument), cols * rows, o.scenes);
  const timings: FeedTimings = { ...DEFAULT_FEED_TIMINGS, ...o.timings };
  const slides = Array.from({ length: o.slides }, (_, i) => new VirtualSlide({ seed: slideSeed(o.seed, i), cols, rows, width, height }));
  const report: SimulationReport = {
    schema: 'focusd/simulation/1',
    instrument: o.instrument,
    instrument_description: instrument(o.instrument).description,
    pattern: 'router',
    seed: o.seed,
    grid: { cols, rows },
    tissue: o.tissue ?? 'procedural',
    tile: { width, height, pixel_size_um: slides[0]?.pixelSizeUm ?? 0.22 },
    tolerance_um: tol,
    started_at: started.toISOString(),
    time_s: 0,
    render: { renders: 0, cache_hits: 0, render_s: 0 },
    with_feedback: null,
    without_feedback: null,
    ...(o.calibration ? { calibration: o.calibration } : {}),
    ...(o.oracle !== undefined ? { oracle: o.oracle } : {}),
  };
  interface Side {
    run: RunKind;
    daemon: DaemonHandle | null;
    feed: MqttFeed | null;
    scanner: VirtualScanner | null;
    results: SlideResult[];
    /** the last daemon's description, for the report. */
    info?: Record<string, unknown>;
  }
  const sides: Side[] = (['no_feedback', 'feedback'] as const)
    .filter((r) => runs.includes(r))
    .map((run) => ({ run, daemon: null, feed: null, scanner: null, results: [] }));
  /** (Re)connects a run's scanner to a daemon from the factory. */
  const connect = async (s: Side): Promise<void> => {
    const d = await o.daemon(s.run);
    s.daemon = d;
    s.info = { endpoint: d.endpoint, pattern: d.pattern, mqtt: d.mqttUrl, base_topic: d.baseTopic, scanner: d.scanner, ...d.info };
    s.feed = new MqttFeed({ url: d.mqttUrl, baseTopic: d.baseTopic, scanner: d.scanner }, timings);
    s.scanner = new VirtualScanner({
      endpoint: d.endpoint,
      pattern: d.pattern,
      scanner: d.scanner,
      feedback: s.run === 'feedback',
      feed: s.feed,
      renderer,
      toleranceUm: tol,
      revealTruth: o.oracle !== undefined,
      onEvent: o.onEvent ? (e) => o.onEvent!(s.run, e) : undefined,
    });
    report.pattern = d.pattern;
    await s.feed.start();
    s.scanner.start();
  };
  try {
    // without feedback first: its images are the first pass of the run with feedback until the first correction
    for (const s of sides) await connect(s);
    // slide by slide, both runs: the renderer's caches hold one slide
    for (const [i, slide] of slides.entries()) {
      for (const s of sides) {
        if (i > 0 && o.restartBetweenSlides) {
          const failed = await disconnect(s);
          if (failed.length) throw failed[0];
          await connect(s);
        }
        const r = await s.scanner!.scanSlide(slide, `sim-${o.seed}-${i + 1}-${tag}-${s.run === 'feedback' ? 'fb' : 'nofb'}`);
        s.results.push(r);
        o.onSlide?.(s.run, r);
      }
    }
  } finally {
    // stop everything even when one part fails to stop; the first failure is rethrown
    const failures: unknown[] = [];
    for (const s of sides) failures.push(...(await disconnect(s)));
    if (failures.length) throw failures[0];
  }
  for (const s of sides) {
    const d = s.info!;
    const rr: RunReport = {
      feedback: s.run === 'feedback',
      daemon: { ...d, ...(o.restartBetweenSlides ? { restarted_between_slides: true } : {}) },
      slides: s.results,
      total: totalOf(s.results),
      after_first: s.results.length > 1 ? totalOf(s.results.slice(1)) : null,
    };
    if (s.run === 'feedback') report.with_feedback = rr;
    else report.without_feedback = rr;
  }
  report.render = { renders: renderer.renders, cache_hits: renderer.hits, render_s: Math.round(renderer.renderMs / 10) / 100 };
  report.time_s = Math.round((performance.now() - t0) / 10) / 100;
  return report;
}
