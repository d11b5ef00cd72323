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
