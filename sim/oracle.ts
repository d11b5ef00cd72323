/**
 * An oracle scorer for the virtual scanner (`focusd simulate --oracle SPEC`): what the feedback loop would do with
 * a model of a given quality. The virtual scanner puts each acquisition's true defocus in the tile header
 * (`x_sim_defocus_um`, only in this mode); the oracle wraps the configured scorer, keeps what it says about the
 * image (tissue, patches, sharpness: the loop judges its moves by sharpness) and replaces the model's reading with
 * the truth, distorted as SPEC says:
 *
 *   gain=G     |reading| = G·|true|           (a model that over- or under-reads; default 1)
 *   sd=S       plus Gaussian noise of S µm on the signed reading (default 0)
 *   sign=true  the true sign, confidence 0.99 (default)
 *   sign=P     right with probability P (0.5..1), confidence 0.99 either way: a model that is confidently wrong
 *   sign=none  no sign: confidence 0.5 and a random sign, like an instrument without sign cues
 *
 * Noise and sign errors are drawn from a hash of (slide, tile, attempt): one acquisition reads the same in every run,
 * and two acquisitions of one tile read independently. Used to split what the loop leaves on the table into the
 * model's share and the loop's own (docs/simulator.md); never part of a daemon outside the simulator.
 */
import { createHash } from 'node:crypto';
import type { Context } from '../core/context.js';
import type { DecodedTile, ModelInfo, ScoreResult } from '../core/types.js';
import type { Scorer } from '../models/scorer.js';

export const ORACLE_TRUTH_FIELD = 'x_sim_defocus_um';

export interface OracleSpec {
  gain: number;
  sdUm: number;
  /** probability that the reported sign is the true one; null: no sign (confidence 0.5). */
  signRight: number | null;
}

/** Parses `gain=1.1,sd=0.2,sign=true|none|0.9`; throws an Error naming the bad part. */
export function parseOracleSpec(text: string): OracleSpec {
  const spec: OracleSpec = { gain: 1, sdUm: 0, signRight: 1 };
  if (text.length > 200) throw new Error('--oracle: longer than 200 characters');
  const trimmed = text.trim();
  if (trimmed === '' || trimmed === 'perfect') return spec;
  const seen = new Set<string>();
  for (const part of trimmed.split(',')) {
    const m = /^\s*(gain|sd|sign)\s*=\s*([^\s=]+)\s*$/.exec(part);
    if (!m) throw new Error(`--oracle: "${part}" is not gain=G, sd=S or sign=true|none|P`);
    const [, key, value] = m as unknown as [string, 'gain' | 'sd' | 'sign', string];
    if (seen.has(key)) throw new Error(`--oracle: ${key} given twice`);
    seen.add(key);
    const num = Number(value);
    if (key === 'gain') {
      if (!(Number.isFinite(num) && num >= 0.2 && num <= 5)) throw new Error(`--oracle: gain "${value}" is not a number in [0.2, 5]`);
      spec.gain = num;
    } else if (key === 'sd') {
      if (!(Number.isFinite(num) && num >= 0 && num <= 5)) throw new Error(`--oracle: sd "${value}" is not a number of µm in [0, 5]`);
      spec.sdUm = num;
    } else if (value === 'true') spec.signRight = 1;
    else if (value === 'none') spec.signRight = null;
    else if (Number.isFinite(num) && num >= 0.5 && num <= 1) spec.signRight = num;
    else throw new Error(`--oracle: sign "${value}" is not true, none or a probability in [0.5, 1]`);
  }
  return spec;
}

export function oracleLabel(s: OracleSpec): string {
  return `gain=${s.gain},sd=${s.sdUm},sign=${s.signRight === null ? 'none' : s.signRight === 1 ? 'true' : s.signRight}`;
}

/** Three independent uniforms in (0, 1) from a string key (deterministic). */
function uniforms(key: string): [number, number, number] {
  const h = createHash('sha256').update(key).digest();
  const u = (i: number) => (h.readUInt32BE(i) + 0.5) / 2 ** 32;
  return [u(0), u(4), u(8)];
}

export class OracleScorer implements Scorer {
  readonly name = 'scorer (oracle)';
  private infoValue: ModelInfo | null = null;

  constructor(
    private readonly inner: Scorer,
    private readonly spec: OracleSpec,
  ) {}

  get info(): ModelInfo {
    if (!this.infoValue) throw new Error('oracle scorer: info before start()');
    return this.infoValue;
  }

  async start(signal: AbortSignal): Promise<void> {
    await this.inner.start(signal);
    const label = oracleLabel(this.spec);
    this.infoValue = {
      name: 'oracle',
      version: label,
      // its own key for what the loop learns: an oracle must not inherit the real model's evidence
      sha256: createHash('sha256').update(`oracle:${label}`).digest('hex'),
      engine: `oracle over ${this.inner.info.engine}`,
      pixel_size_um: this.inner.info.pixel_size_um,
      // uncalibrated: the loop learns the sign as it would for a new bundle; no sign at all is "unrecoverable"
      calibration: { sign: this.spec.signRight === null ? 'unrecoverable' : 'model', fitted: false, guard_um: 0 },
    };
  }

  async stop(): Promise<void> {
    await this.inner.stop();
  }

  async score(tile: DecodedTile): Promise<ScoreResult> {
    const seen = await this.inner.score(tile);
    const truth = (tile.header as unknown as Record<string, unknown>)[ORACLE_TRUTH_FIELD];
    if (typeof truth !== 'number' || !Number.isFinite(truth))
      throw new Error(`oracle scorer: tile without a finite ${ORACLE_TRUTH_FIELD} (only the virtual scanner's --oracle mode sends it)`);
    // no tissue stays no tissue: the oracle knows the defocus, not what the detector sees
    if (seen.defocus_um === null) return { ...seen, model: this.info };
    const h = tile.header;
    const [u1, u2, u3] = uniforms(`${h.scanner}/${h.slide}/${h.scan}/${h.tile.index}/${h.attempt}`);
    const noise = this.spec.sdUm * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
    const reading = this.spec.gain * truth + noise;
    let signed: number;
    let confidence: number;
    if (this.spec.signRight === null) {
      signed = (u3 < 0.5 ? 1 : -1) * Math.abs(reading);
      confidence = 0.5;
    } else {
      signed = u3 < this.spec.signRight ? reading : -reading;
      confidence = 0.99;
    }
    return {
      ...seen,
      defocus_um: Math.round(signed * 1000) / 1000,
      uncertainty_um: Math.max(this.spec.sdUm, 0.05),
      sign_confidence: confidence,
      model: this.info,
    };
  }
}

/** A Daemon scorer factory (DaemonOptions.scorer) that wraps the configured scorer in an oracle. */
export function oracleScorerFactory(spec: OracleSpec, configured: (ctx: Context) => Scorer): (ctx: Context) => Scorer {
  return (ctx) => new OracleScorer(configured(ctx), spec);
}
