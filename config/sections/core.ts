// scanner, log, http, shutdown, store: the daemon's own settings.
export const core = {
  scanner: {
    id: {
      doc: 'Identifier of the scanner this daemon serves; used in topics, logs and history.',
      format: 'identifier',
      default: 'axioscan-1',
      env: 'FOCUSD_SCANNER_ID',
      arg: 'scanner-id',
    },
  },
  log: {
    level: {
      doc: 'Log level (error, warn, info, debug).',
      format: ['error', 'warn', 'info', 'debug'],
      default: 'info',
      env: 'FOCUSD_LOG_LEVEL',
      arg: 'log-level',
    },
    format: {
      doc: 'Log format: json (one JSON object per line, for journald), pretty (human readable), auto (pretty on a TTY, else json).',
      format: ['auto', 'json', 'pretty'],
      default: 'auto',
      env: 'FOCUSD_LOG_FORMAT',
    },
  },
  http: {
    port: {
      doc: 'Port of the HTTP status endpoint (GET /status, /healthz, /metrics); 0 disables it.',
      format: 'port',
      default: 0,
      env: 'FOCUSD_HTTP_PORT',
    },
    host: {
      doc: 'Address the HTTP status endpoint binds to.',
      format: String,
      default: '127.0.0.1',
      env: 'FOCUSD_HTTP_HOST',
    },
  },
  shutdown: {
    drainTimeoutMs: {
      doc: 'On SIGTERM, how long to wait for queued tiles to be scored and published before stopping anyway. Must end, with 5 s for stopping the rest (STOP_TEARDOWN_MS), before TimeoutStopSec of systemd/focusd.service (30 s, so at most 24 999 ms; check-config refuses more) and below 2^31 - 1 ms (the longest Node.js timer), like every other timer setting (mqtt.connectTimeoutMs, reconnectMs, statsIntervalS, controller.actionTtlS).',
      format: 'positive-int',
      default: 20000,
      env: 'FOCUSD_DRAIN_TIMEOUT_MS',
    },
  },
  health: {
    outboxBacklog: {
      doc: 'Actions waiting in the outbox (not yet acknowledged by the broker) beyond which /healthz and the retained status say degraded (reason outbox_backlog).',
      format: 'positive-int',
      default: 500,
      env: 'FOCUSD_HEALTH_OUTBOX_BACKLOG',
    },
    checkIntervalMs: {
      doc: 'How often the health reasons (mqtt_disconnected, store_write_failed, outbox_backlog) are re-evaluated; a change republishes the retained status and is logged.',
      format: 'positive-int',
      default: 1000,
    },
  },
  store: {
    dir: {
      doc: 'Directory of the state database (history, action outbox). Empty: $STATE_DIRECTORY when systemd sets it, else ./var.',
      format: String,
      default: '',
      env: 'FOCUSD_STATE_DIR',
    },
    historyRetentionDays: {
      doc: 'Tile history older than this many days is deleted.',
      format: 'positive-int',
      default: 90,
      env: 'FOCUSD_HISTORY_RETENTION_DAYS',
    },
  },
};
