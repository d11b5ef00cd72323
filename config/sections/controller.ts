// Feedback controller: how out-of-focus tiles turn into commands for the scanner.
export const controller = {
  controller: {
    dryRun: {
      doc: 'Shadow mode: publish the actions the controller would take, marked dry_run, and do not count them against limits.',
      format: 'bool',
      default: false,
      env: 'FOCUSD_DRY_RUN',
      arg: 'dry-run',
    },
    actionTtlS: {
      doc: 'An action not delivered to the broker within this many seconds expires and is reported instead of sent.',
      format: 'positive-int',
      default: 300,
      env: 'FOCUSD_ACTION_TTL_S',
    },
    signConfidence: {
      doc: "Use the model's sign of defocus when its sign_confidence is at least this; below it the sign is found by a probe re-acquisition at z + |defocus|.",
      format: 'unit-interval',
      default: 0.8,
    },
    drift: {
      consecutive: {
        doc: 'Sustained drift: this many consecutive tissue tiles of a slide out of focus in the same direction.',
        format: 'positive-int',
        default: 3,
      },
      window: {
        doc: 'Sustained drift, second rule: number of recent tissue tiles of a slide looked at.',
        format: 'positive-int',
        default: 10,
      },
      share: {
        doc: 'Sustained drift, second rule: share of the recent window out of focus in the same direction (needs a full window).',
        format: 'unit-interval',
        default: 0.6,
      },
      cooldownTiles: {
        doc: 'After a z_offset, this many tiles of the slide must arrive (and the drift window refills with tiles taken after it) before another z_offset; the tiles in flight still show the old error.',
        format: 'positive-int',
        default: 5,
      },
      tiltShare: {
        doc: "Share of the estimated tilt a 'tilt' z_offset's plane carries. Under 1 on purpose: a plane that is too steep makes the far end of the next row worse than a flat offset would, and in a raster scan a drift during each row adds to the tilt along it.",
        format: 'unit-interval',
        default: 0.7,
      },
      leadUm: {
        doc: "A 'drift' z_offset aims this many µm past focus, the way the drift goes: the tiles that showed it were taken several acquisitions before the correction applies, and the drift went on. 0 aims at focus. Must be >= 0 and below the tolerance.",
        format: Number,
        default: 0,
      },
      hysteresisUm: {
        doc: 'A correction opposite in sign to the previous one of the slide needs the drift to exceed the tolerance by this many µm more (no chattering around the tolerance). Must be >= 0.',
        format: Number,
        default: 0.5,
      },
    },
    limits: {
      deadBandUm: {
        doc: 'No z_offset smaller than this many µm is sent. Must be >= 0.',
        format: Number,
        default: 0.5,
      },
      maxStepUm: {
        doc: 'Largest z change of one command (µm); larger corrections are clamped and marked clamped.',
        format: 'positive-number',
        default: 3,
      },
      maxTiltUmPerMm: {
        doc: "Largest tilt a z_offset may carry (µm of z per mm of stage travel, per axis): a 'tilt' z_offset has a plane (docs/mqtt.md) so the correction follows the slide's tilt across the next row; 0 sends flat offsets only. Must be >= 0.",
        format: Number,
        default: 10,
      },
      maxCumulativeUm: {
        doc: 'Largest total z_offset correction per slide (µm); beyond it the controller refuses and logs a warning.',
        format: 'positive-number',
        default: 10,
      },
      maxReacquirePerTile: {
        doc: 'Most re-acquisitions requested for one tile (probes included).',
        format: 'positive-int',
        default: 2,
      },
      maxActionsPerMinute: {
        doc: 'Most actions per slide in any 60 s; further ones are refused and logged. A flood guard against a runaway loop, not a budget: a 20x scanner takes several tiles a second and a busy slide needs a re-acquisition for a fifth of them, so a limit near that rate refuses the corrections that matter (maxReacquirePerTile bounds the extra acquisitions per tile).',
        format: 'positive-int',
        default: 600,
      },
    },
    learning: {
      trust: {
        doc: "Outcome learning (docs/controller.md): the model's sign (times the learned direction) is trusted only when the posterior probability that it is right, in the tile's sign-confidence bin, is at least this; otherwise the sign is found by a probe.",
        format: 'unit-interval',
        default: 0.8,
      },
      priorCalibrated: {
        doc: "Pseudo-count of right signs a bundle calibrated on a focus stack (manifest calibration.sign model or inverted, with fitted_at) starts with; an uncalibrated bundle starts at none (uniform prior: probe until the instrument's outcomes say which way the sign points).",
        format: Number,
        default: 4,
      },
      settleTiles: {
        doc: 'After a z_offset, this many first acquisitions are assumed still in flight (taken at the old z) and are not used to judge it.',
        format: 'nat',
        default: 2,
      },
      evalTiles: {
        doc: 'A z_offset is judged on the median |defocus| of this many tissue tiles after the settling ones, against the run that triggered it (two more when they disagree on worse: an isolated blur is one tile, a wrong-way z_offset makes them all worse).',
        format: 'positive-int',
        default: 3,
      },
      gainMinExperiments: {
        doc: "Magnitude learning (docs/controller.md): sized moves toward focus observed before the learned gain (µm the model reads per µm of true defocus on this instrument) sizes re-acquisitions, probes and z_offsets.",
        format: 'positive-int',
        default: 3,
      },
      zOffsetPriorDamping: {
        doc: 'Until the magnitude gain is learned, a z_offset moves only this fraction of the measured defocus: an overestimated |defocus| must not overshoot the tiles still to come.',
        format: 'unit-interval',
        default: 0.5,
      },
      maxWrongWay: {
        doc: 'Stop-loss: after this many wrong-way moves on a slide (a commanded move that left the tile further from focus), z_offsets are frozen on that slide and every sign is probed.',
        format: 'positive-int',
        default: 2,
      },
    },
    audit: {
      enabled: {
        doc: "Audit in-focus verdicts (docs/controller.md): a first acquisition the model reads in focus is re-acquired at the best focus its neighbours' settled moves predict, when recent tiles of the slide were settled out of focus beyond the tolerance in one direction. Catches the model's blind zones (optics where it reads 1-3 µm of defocus as in focus); an audit that does not come back sharper is taken back.",
        format: 'bool',
        default: true,
      },
      recentTiles: {
        doc: 'Audit: settled tiles count only when they are among this many most recent first acquisitions of the slide (drift and tilt make older ones stale).',
        format: 'positive-int',
        default: 4,
      },
      minSettled: {
        doc: 'Audit: recent settled tiles needed, all off focus beyond the tolerance on the same side (an isolated bump of the section is one tile, not a trend).',
        format: 'positive-int',
        default: 2,
      },
      minError: {
        doc: "Audit: the settled tiles' plan error must exceed this many tolerances (a settled z is a landing read in focus, itself up to a tolerance off).",
        format: 'positive-number',
        default: 1.5,
      },
      maxShare: {
        doc: "Audit: at most this share of a slide's tissue tiles (at least 2 audits) are audited; audits stop on a slide once two more of them failed than succeeded.",
        format: 'unit-interval',
        default: 0.25,
      },
    },
    surface: {
      minPointsPlane: {
        doc: 'Tiles with a known best-focus z needed before the focus surface (plane) is fitted.',
        format: 'positive-int',
        default: 4,
      },
      minPointsQuadratic: {
        doc: 'Tiles needed before the focus surface becomes quadratic in x and y.',
        format: 'positive-int',
        default: 12,
      },
      maxPoints: {
        doc: 'Most recent tiles per slide the focus surface is fitted to.',
        format: 'positive-int',
        default: 400,
      },
    },
  },
};
