// ZeroMQ ingest and the scoring pipeline's queue.
export const ingest = {
  ingest: {
    endpoint: {
      doc: 'ZeroMQ endpoint focusd binds to for incoming tiles (tcp://host:port with port 1..65535, or ipc://path).',
      format: 'zmq-endpoint',
      default: 'tcp://127.0.0.1:5555',
      env: 'FOCUSD_INGEST_ENDPOINT',
      arg: 'ingest-endpoint',
    },
    pattern: {
      doc: 'Socket pattern: pull (fire and forget, sender uses PUSH) or router (sender uses REQ/DEALER and gets each verdict as a reply).',
      format: ['pull', 'router'],
      default: 'pull',
      env: 'FOCUSD_INGEST_PATTERN',
      arg: 'ingest-pattern',
    },
    maxMessageBytes: {
      doc: 'Largest accepted message (header + payload) in bytes; larger ones are rejected (message_too_large) by the socket (ZMQ_MAXMSGSIZE) or the receiver.',
      format: 'positive-int',
      default: 64 * 1024 * 1024,
      env: 'FOCUSD_MAX_MESSAGE_BYTES',
    },
    maxPixels: {
      doc: 'Largest accepted image in pixels (width*height); guards against decompression bombs (sharp limitInputPixels).',
      format: 'positive-int',
      default: 40_000_000,
      env: 'FOCUSD_MAX_PIXELS',
    },
    curve: {
      secretKeyFile: {
        doc: 'File whose first line is the Z85 CURVE secret key (40 characters) of the ingest socket. Set: scanners must connect with CURVE (the matching server public key) and a client key listed in ingest.curve.clientKeysFile; others are refused in the handshake (counted as ingest_handshake_failures). Empty: the systemd credential ingest-curve-secret-key if present, else no CURVE.',
        format: String,
        default: '',
        env: 'FOCUSD_INGEST_CURVE_SECRET_KEY_FILE',
      },
      clientKeysFile: {
        doc: 'File of the scanner public keys allowed to connect with CURVE: Z85, one per line; a line starting with # is a comment. Required with a secret key. Empty: the systemd credential ingest-curve-clients.',
        format: String,
        default: '',
        env: 'FOCUSD_INGEST_CURVE_CLIENT_KEYS_FILE',
      },
    },
    highWaterMark: {
      doc: 'ZeroMQ receive high-water mark (messages). With overflow=backpressure a full queue stops reading, this buffer fills and the sender blocks.',
      format: 'positive-int',
      default: 8,
      env: 'FOCUSD_INGEST_HWM',
    },
  },
  pipeline: {
    queueSize: {
      doc: 'Tiles admitted to the pipeline (decoding, waiting or scoring) at once.',
      format: 'positive-int',
      default: 16,
      env: 'FOCUSD_QUEUE_SIZE',
    },
    overflow: {
      doc: 'When scoring falls behind: backpressure (stop reading the socket, the sender slows down, nothing is lost) or skip (drop the tile, count it and publish it on the error topic).',
      format: ['backpressure', 'skip'],
      default: 'backpressure',
      env: 'FOCUSD_OVERFLOW',
    },
    scoreConcurrency: {
      doc: 'Tiles in the scorer at once. 2 lets one tile\'s tissue search and patch copy (main thread) overlap the previous tile\'s inference (worker); verdicts are still published in arrival order.',
      format: 'positive-int',
      default: 2,
      env: 'FOCUSD_SCORE_CONCURRENCY',
    },
    decodeConcurrency: {
      doc: 'Tiles decoded in parallel (sharp uses libvips threads underneath).',
      format: 'positive-int',
      default: 2,
      env: 'FOCUSD_DECODE_CONCURRENCY',
    },
  },
};
