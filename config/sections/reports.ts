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
    html: {
      doc: 'The scheduled run also writes drift-<date>.html (self-contained: inline SVG charts and CSS, no script) and index.html, and announces the report on <base>/report. `focusd report` does so with --html.',
      format: 'bool',
      default: true,
      env: 'FOCUSD_REPORT_HTML',
    },
    serveHttp: {
      doc: 'With http.port set, the status server lists and serves the report directory read-only under /reports/.',
      format: 'bool',
      default: true,
    },
    trendNights: {
      doc: 'Nights (report windows of windowHours, ending at the report time) in the trend section, read from the tile history; the history must reach that far back (store.historyRetentionDays).',
      format: 'positive-int',
      default: 30,
    },
    change: {
      baselineNights: {
        doc: 'Change detector (two-sided CUSUM, docs/reports.md): the first this-many nights of the trend are the baseline (mean, standard deviation); with fewer nights no change is reported.',
        format: 'positive-int',
        default: 10,
      },
      k: {
        doc: 'CUSUM slack in baseline standard deviations: nightly deviations smaller than this are forgotten.',
        format: 'positive-number',
        default: 1,
      },
      h: {
        doc: 'CUSUM decision threshold in baseline standard deviations: a cumulative sum beyond it raises a change alert.',
        format: 'positive-number',
        default: 5,
      },
      minRatio: {
        doc: 'A change is reported only when the mean since the change differs from the baseline mean by at least this factor (up or down), so statistically clear but tiny shifts stay quiet.',
        format: 'positive-number',
        default: 1.5,
      },
      minSigmaFraction: {
        doc: 'Floor of the baseline standard deviation as a fraction of the baseline median (a perfectly steady baseline would otherwise alarm on any change).',
        format: 'unit-interval',
        default: 0.1,
      },
    },
  },
};
