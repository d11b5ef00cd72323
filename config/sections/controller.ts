// Feedback controller: how out-of-focus tiles turn into commands for the scanner.
export const controller = {
  controller: {
    dryRun: {
      doc: 'Shadow mode: publish the actions the controller would take, marked dry_run, and do not count them against limits.',
      format: Boolean,
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
  },
};
