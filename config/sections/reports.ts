// Nightly drift summary reports written from the tile history.
export const reports = {
  reports: {
    schedule: {
      doc: 'Cron expression (node-cron, local time or reports.timezone) of the drift report run; empty disables scheduled reports.',
      format: 'cron-or-empty',
      default: '0 2 * * *',
      env: 'FOCUSD_REPORT_SCHEDULE',
    },
    timezone: {
      doc: 'IANA time zone of reports.schedule (e.g. Europe/Berlin); empty: the host time zone.',
      format: String,
      default: '',
      env: 'FOCUSD_REPORT_TZ',
    },
    windowHours: {
      doc: 'Each report covers the tiles of this many hours before the run.',
      format: 'positive-int',
      default: 24,
    },
    dir: {
      doc: 'Directory the reports (drift-<date>.md and .json) are written to. Empty: <state dir>/reports.',
      format: String,
      default: '',
      env: 'FOCUSD_REPORT_DIR',
    },
    outOfFocusAlertRate: {
      doc: 'A slide whose share of out-of-focus tiles exceeds this is flagged in the report.',
      format: 'unit-interval',
      default: 0.05,
    },
    driftAlertUmPerHour: {
      doc: 'A slide whose mean defocus drifts faster than this (µm per hour, either direction) is flagged in the report.',
      format: 'positive-number',
      default: 0.5,
    },
  },
};
