// Domain types shared by every part of focusd. Wire formats are described by the JSON Schemas in docs/schemas.

export const PIXEL_TYPES = ['GRAY8', 'GRAY16', 'RGB24', 'BGR24', 'RGB48', 'BGR48'] as const;
export type PixelType = (typeof PIXEL_TYPES)[number];
export const TILE_FORMATS = ['png', 'jpeg', 'tiff', 'raw'] as const;
export type TileFormat = (typeof TILE_FORMATS)[number];

/** Frame 1 of a wire-protocol v1 message (docs/protocol.md). */
export interface TileHeader {
  v: 1;
  scanner: string;
  slide: string;
  scan: string;
  seq: number;
  tile: { index: number; row: number; col: number };
  stage_um: { x: number; y: number; z: number };
  pixel_size_um: number;
  objective: string;
  acquired_at: string;
  attempt: number;
  format: TileFormat;
  width?: number;
  height?: number;
  pixel_type?: PixelType;
  stride?: number;
  /** raw 16-bit types: data bits per sample (12 for a 12-bit camera in a 16-bit container); default 16. */
  significant_bits?: number;
  /** vendor fields (docs/protocol.md): passed through, never interpreted. */
  [vendor: `x_${string}`]: unknown;
}

/** A tile as it came off the socket, header validated, payload not yet decoded. */
export interface IncomingTile {
  header: TileHeader;
  payload: Buffer;
  /** performance.now() when the first frame was received; latency is measured from here. */
  receivedAt: number;
  /** size of the header frame in bytes (reported with a rejection decided after ingest); absent: unknown. */
  headerBytes?: number;
}

/** A decoded tile: 8-bit sRGB, interleaved RGB, tightly packed (width*3 bytes per row). */
export interface DecodedTile {
  header: TileHeader;
  width: number;
  height: number;
  rgb: Buffer;
  receivedAt: number;
}

export interface ModelInfo {
  name: string;
  version: string;
  sha256: string;
  /** engine actually running, e.g. "onnxruntime/cpu", "tfjs/wasm", "classical". */
  engine: string;
  /** µm per pixel the scorer expects (the model bundle's input pixel size); tiles of other sizes are rescaled. */
  pixel_size_um: number;
  /**
   * The bundle's calibration sign and whether it was fitted on a focus stack (manifest calibration.fitted_at):
   * the controller's prior for "the model's sign is right" (docs/controller.md, outcome learning). Absent for
   * scorers without a sign (classical).
   */
  calibration?: {
    sign: 'model' | 'inverted' | 'unrecoverable';
    fitted: boolean;
    /** the bundle's guard band (µm): in focus only when |defocus| ≤ tolerance − guard_um (0: none). */
    guard_um: number;
  };
}

/** Coarse per-patch focus map of one tile: row-major, null where a cell holds no tissue patch. */
export interface FocusMap {
  rows: number;
  cols: number;
  defocus_um: (number | null)[];
}

export interface ScoreResult {
  /** Signed defocus in µm (positive = stage too high / above focus, see docs/protocol.md); null when no tissue. */
  defocus_um: number | null;
  /** Spread of the patch estimates (µm), an uncertainty for the controller; null when no tissue. */
  uncertainty_um: number | null;
  /** Probability that the sign of defocus_um is right, 0.5..1; null when no tissue. */
  sign_confidence: number | null;
  tissue_fraction: number;
  patches: number;
  focus_map: FocusMap | null;
  model: ModelInfo;
  /**
   * Relative sharpness of the scored tissue cells (Brenner gradient / mean², on the raw pixels): meaningful only
   * between acquisitions of the same tile, where the sharper one is nearer focus whatever the instrument's
   * aberrations. The controller judges its own moves with it (docs/controller.md). Absent when not computed.
   */
  sharpness?: number | null;
}

export type Verdict = 'in_focus' | 'out_of_focus' | 'no_tissue';

export interface TileOutcome {
  header: TileHeader;
  verdict: Verdict;
  score: ScoreResult;
  /** ms from first frame received to verdict. */
  latency_ms: number;
}

/** Why a message was rejected; stable codes, documented in docs/protocol.md. */
export type RejectReason =
  | 'bad_frames'
  | 'bad_json'
  | 'invalid_header'
  | 'unsupported_version'
  | 'payload_size_mismatch'
  | 'message_too_large'
  | 'too_many_pixels'
  | 'decode_failed'
  | 'unknown_pixel_type'
  | 'skipped_overload'
  | 'shutting_down'
  | 'scoring_failed'
  | 'paused';

export interface Rejection {
  reason: RejectReason;
  detail: string;
  /** what was received: header (when it parsed), frame sizes. */
  received: { header?: unknown; frames: number; bytes: number[] };
}

/** What the pipeline answers for one message: router mode sends this back to the sender. */
export type TileReply = ({ ok: true } & TileOutcome) | ({ ok: false } & Rejection);

export type ActionType = 'reacquire' | 'z_offset';

/** A command the controller decided against because of a safety limit. */
export interface ActionRefusal {
  type: ActionType;
  limit: string;
  detail: string;
  scanner: string;
  slide: string;
  tile: number;
  seq: number;
  /** refusals of the same slide and limit not reported since the previous one. */
  suppressed: number;
}

export interface Action {
  id: string;
  type: ActionType;
  z_offset_um: number;
  scanner: string;
  slide: string;
  scan: string;
  tile: TileHeader['tile'] & { seq: number; attempt: number };
  reason: string;
  dry_run: boolean;
  created_at: string;
  expires_at: string;
  [extra: string]: unknown;
}

/** What the ingest hands tiles to (implemented by daemon/pipeline.ts). */
export interface TileSink {
  /** Resolves when another tile may be submitted: with overflow=backpressure waits for queue space, with skip resolves at once. */
  ready(): Promise<void>;
  /** Queues a validated tile; resolves with its verdict or the reason it was not scored. Never rejects. */
  submit(tile: IncomingTile): Promise<TileReply>;
  /** Counts, logs and publishes a message the ingest rejected before it became a tile. */
  reject(rejection: Rejection): void;
}

/** Focus surface of one slide (daemon/focus-surface.ts); tile messages carry its prediction. */
export interface SurfaceFit {
  model: 'plane' | 'quadratic';
  /** coefficients in normalised coordinates u = (x − cx) / s, v = (y − cy) / s: [1, u, v, u², uv, v²]. */
  coef: number[];
  center: { x: number; y: number };
  scale: number;
  points: number;
  /** points dropped as outliers in the robust refit. */
  outliers: number;
  rms_um: number;
  /** gradient at the centre, µm of z per mm of stage travel (the slide's tilt). */
  tilt_um_per_mm: { x: number; y: number };
}

export interface SurfacePrediction {
  best_focus_z_um: number;
  /** stage z − predicted best focus: the defocus this tile should show. */
  defocus_um: number;
  model: SurfaceFit['model'];
  points: number;
  rms_um: number;
}

/** What the durable outbox (daemon/outbox.ts) needs from the MQTT side. */
export interface ActionPublisher {
  readonly connected: boolean;
  /** Resolves on PUBACK, rejects when the publish failed. */
  publishAction(a: Action): Promise<void>;
  /** Publishes the expiry report of an action (error topic); resolves on PUBACK. */
  publishExpired(a: Action): Promise<void>;
  /** Calls back after every (re)connect; returns an unsubscribe function. */
  onConnect(listener: () => void): () => void;
}

/** Why focusd is degraded (docs/mqtt.md, /healthz): stable codes. */
export type HealthReason = 'mqtt_disconnected' | 'store_write_failed' | 'outbox_backlog';

/** What /healthz, the retained status and stats say about health (daemon/health.ts). */
export interface HealthReport {
  ok: boolean;
  reasons: Array<{ reason: HealthReason; detail: string; since: string }>;
}

/** Outcome learning (daemon/sign-learner.ts): evidence that the model's sign is right, one sign-confidence bin. */
export interface SignBinState {
  /** sign-confidence range [lo, hi). */
  lo: number;
  hi: number;
  /** |defocus| range [abs_lo_um, abs_hi_um) of the cell (µm; null: unbounded). */
  abs_lo_um: number;
  abs_hi_um: number | null;
  /** experiments (probes, re-acquisitions, z_offsets) whose outcome agreed / disagreed with the model's sign. */
  right: number;
  wrong: number;
  /** posterior mean of P(model sign right), prior included. */
  p_right: number;
  /** +1: the model's sign is trusted as is, −1: trusted reversed, 0: not known yet (probe). */
  direction: 1 | -1 | 0;
}

/** What has been learned about one model's sign on one scanner and objective. */
export interface SignLearningState {
  scanner: string;
  objective: string;
  model_sha256: string;
  /** the bundle's calibration sign: the learning is relative to the sign the bundle already reports. */
  calibration_sign: 'model' | 'inverted' | 'unrecoverable' | 'none';
  /** calibration fitted on a focus stack: the prior favours the bundle's sign. */
  calibrated: boolean;
  /** prior pseudo-counts (right, wrong) added to every bin. */
  prior: { right: number; wrong: number };
  bins: SignBinState[];
  /** the direction over all trusted-confidence bins (bins at ≥ controller.signConfidence pooled). */
  direction: 1 | -1 | 0;
  experiments: number;
  /** the evidence says the bundle's sign is reversed on this instrument although the bundle was calibrated, or (uncalibrated) reversed. */
  inverted_detected: boolean;
  /**
   * Magnitude learning (docs/controller.md): re-acquisitions and probes move by |d| / gain, z_offsets by
   * |d| / z_offset_gain; learned: median of the observed gains (null before learning.gainMinExperiments).
   */
  magnitude: { gain: number; z_offset_gain: number; learned: number | null; experiments: number };
  updated_at: string | null;
}

/** A slide on which the stop-loss fired. */
export interface DivergingSlide {
  scanner: string;
  slide: string;
  since: string;
  reason: string;
  wrong_way_moves: number;
}

/** The feedback loop's health: in status, stats, /metrics (docs/controller.md). */
export interface LoopState {
  sign_learning: SignLearningState[];
  /** commanded moves that left a tile (or, for a z_offset, the next tiles) further from focus, since start. */
  wrong_way_moves: number;
  /** z_offsets taken back because the tiles after them got worse. */
  z_offsets_reverted: number;
  /** audits of in-focus verdicts (docs/controller.md): sent, came back sharper (the verdict was wrong), came back no sharper (taken back). */
  audits: { sent: number; sharper: number; no_sharper: number };
  /** slides where z_offsets are frozen and every sign is probed (most recent last, at most 32). */
  diverging_slides: DivergingSlide[];
}

/** A problem of the feedback loop itself, published on the error topic. */
export interface LoopAlert {
  reason: 'sign_inverted_detected' | 'loop_diverging';
  detail: string;
  scanner: string;
  slide: string;
  objective: string;
  /** sign_inverted_detected: the learning state that contradicts the bundle; loop_diverging: the slide. */
  learning?: SignLearningState;
  diverging?: DivergingSlide;
}

/** Whose sign evidence: the store keeps it per scanner, objective and model (sha256 + the bundle's calibration sign). */
export interface SignEvidenceKey {
  scanner: string;
  objective: string;
  model_sha256: string;
  calibration_sign: SignLearningState['calibration_sign'];
  calibrated: boolean;
}

/** Stored evidence of one sign-confidence bin. */
export interface SignBinCounts {
  bin: number;
  right: number;
  wrong: number;
  updated_at: number;
}
