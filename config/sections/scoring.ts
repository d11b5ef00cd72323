// Scorer, inference engine, tissue detection, decision.
export const scoring = {
  scoring: {
    scorer: {
      doc: 'Which scorer rates tiles: cnn (model bundle run by scoring.engine.type) or classical (multi-scale focus measure, no model).',
      format: ['cnn', 'classical'],
      default: 'cnn',
      env: 'FOCUSD_SCORER',
      arg: 'scorer',
    },
    model: {
      doc: 'Directory of the model bundle (manifest.json + model). Empty: the bundle shipped in models/default.',
      format: String,
      default: '',
      env: 'FOCUSD_MODEL',
      arg: 'model',
    },
    engine: {
      type: {
        doc: 'Inference engine: onnx (onnxruntime-node) or tfjs (tfjs-node-gpu, then tfjs-node, then wasm).',
        format: ['onnx', 'tfjs'],
        default: 'onnx',
        env: 'FOCUSD_ENGINE',
      },
      device: {
        doc: 'Preferred device: cpu, cuda or tensorrt (onnx), gpu (tfjs). A device that is not available falls back to CPU with a warning and status says so.',
        format: ['cpu', 'cuda', 'tensorrt', 'gpu'],
        default: 'cpu',
        env: 'FOCUSD_DEVICE',
      },
      threads: {
        doc: 'Intra-op threads for CPU inference; 0 lets the engine decide.',
        format: 'nat',
        default: 0,
        env: 'FOCUSD_THREADS',
      },
      batchSize: {
        doc: 'Patches per inference call.',
        format: 'positive-int',
        default: 8,
        env: 'FOCUSD_BATCH_SIZE',
      },
    },
    patches: {
      maxPerTile: {
        doc: 'Most patches scored per tile, the ones with the most tissue first; 0 scores every tissue patch.',
        format: 'nat',
        default: 8,
        env: 'FOCUSD_MAX_PATCHES',
      },
      minTissueFraction: {
        doc: 'A patch is scored only when at least this share of its pixels is tissue.',
        format: 'unit-interval',
        default: 0.25,
      },
    },
    classical: {
      calibration: {
        doc: 'JSON file with the classical focus-measure calibration table (measure → |defocus| µm). Empty: models/classical/calibration.json.',
        format: String,
        default: '',
      },
    },
  },
  tissue: {
    minFraction: {
      doc: 'A tile with less tissue than this share of its pixels gets the verdict no_tissue.',
      format: 'unit-interval',
      default: 0.05,
      env: 'FOCUSD_MIN_TISSUE',
    },
    odThreshold: {
      doc: 'Optical density (sum over RGB of -log10(I/I0)) above which a pixel may be tissue.',
      format: 'positive-number',
      default: 0.15,
    },
    saturationThreshold: {
      doc: 'HSV saturation above which a pixel may be tissue; stained tissue is coloured, dust and pen are not (or are too dark).',
      format: 'unit-interval',
      default: 0.07,
    },
    maxOd: {
      doc: 'Optical density above which a pixel is opaque (pen marks, dust clumps, folds) and not counted as tissue.',
      format: 'positive-number',
      default: 2.2,
    },
    inkHueMin: {
      doc: 'Saturated pixels with an HSV hue (degrees) from tissue.inkHueMin to tissue.inkHueMax are marker ink, not stain (H&E and PAS are pink, magenta, purple or violet-blue), and count as opaque.',
      format: 'nat',
      default: 60,
    },
    inkHueMax: {
      doc: 'Upper end of the ink hue range, see tissue.inkHueMin.',
      format: 'nat',
      default: 228,
    },
    glassMin: {
      doc: 'Lowest 8-bit brightness taken as empty glass (I0 of the optical density): I0 per channel is the tile 99.5th percentile, but at least this, so a tile fully covered by tissue is not read as glass.',
      format: 'int',
      default: 225,
    },
    cellPx: {
      doc: 'Side of one cell of the tissue mask grid, in tile pixels.',
      format: 'positive-int',
      default: 16,
    },
    opaqueMarginCells: {
      doc: 'Cells within this many cells of an opaque cell (pen mark, dust clump) are not tissue, so the soft edges of pen marks are not counted.',
      format: 'nat',
      default: 3,
    },
    opaqueCellFraction: {
      doc: 'A cell is opaque when at least this share of its pixels is above tissue.maxOd.',
      format: 'unit-interval',
      default: 0.5,
    },
  },
  decision: {
    toleranceUm: {
      doc: 'A tile with |defocus| at or below this many µm is in focus; beyond it is out of focus.',
      format: 'positive-number',
      default: 1,
      env: 'FOCUSD_TOLERANCE_UM',
      arg: 'tolerance-um',
    },
  },
};
