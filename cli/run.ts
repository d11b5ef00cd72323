import { ConfigError, loadConfig, STOP_TEARDOWN_MS } from '../config/load.js';
import { Daemon } from '../daemon/daemon.js';
import { createLogger } from '../core/logger.js';
import { splitConfigArgs } from './args.js';

/**
 * `focusd run`: start, then wait for SIGTERM/SIGINT. First signal: graceful stop (drain within
 * shutdown.drainTimeoutMs, which is below systemd's TimeoutStopSec). Second signal: exit at once.
 * A signal during startup cancels it. Exit codes: 0 clean stop, 1 failure, 78 bad config.
 */
const RUN_USAGE = `usage: focusd run [--config FILE] [--<key> VALUE ...]

Runs the daemon until SIGTERM/SIGINT (systemd: Type=notify, systemd/focusd.service). Every setting can come from
the file, the environment (FOCUSD_*) or an option; \`focusd check-config --schema\` lists them with their defaults,
\`focusd check-config --config FILE\` validates a file. Exit codes: 0 clean stop, 1 failure, 64 usage, 78 bad config.
`;

export async function runMain(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(RUN_USAGE);
    return 0;
  }
  let config;
  try {
    const split = splitConfigArgs(argv);
    if (split.rest.length > 0) throw new ConfigError([`unknown option(s): ${split.rest.join(' ')} (see focusd check-config --schema)`]);
    config = loadConfig({ file: split.configFile, args: split.configArgs });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`focusd: ${err.message}\n`);
      return 78;
    }
    process.stderr.write(`focusd: ${(err as Error).message}\n`);
    return 64;
  }
  const logger = createLogger({ level: config.log.level, format: config.log.format as 'auto' });
  const daemon = new Daemon(config, { logger });
  const startup = new AbortController();
  let signals = 0;
  let resolveStop!: (reason: string) => void;
  const stopRequested = new Promise<string>((r) => (resolveStop = r));

  const onSignal = (sig: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      logger.warn(`${sig} again: exiting without draining`);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    }
    logger.info(`${sig} received`);
    startup.abort(new Error(`${sig} during startup`));
    resolveStop(sig);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.on('SIGHUP', () => logger.info('SIGHUP ignored: restart the service to apply configuration changes'));
  process.on('uncaughtException', (err) => {
    logger.error(`uncaught exception: ${err.stack ?? err}`);
    process.exitCode = 1;
    void daemon.stop('uncaught exception').finally(() => process.exit(1));
  });
  process.on('unhandledRejection', (err) => {
    // a rejected promise nobody awaited is a bug; count it loudly rather than crash a scanner run
    logger.error(`unhandled rejection: ${(err as Error)?.stack ?? err}`);
  });

  try {
    await daemon.start(startup.signal);
  } catch (err) {
    if (startup.signal.aborted) {
      logger.info('startup cancelled');
      return 0;
    }
    logger.error(`focusd failed to start: ${(err as Error).message}`);
    return 1;
  }
  const reason = await stopRequested;
  // hard deadline: a stop that hangs must not outlive systemd's patience
  const hard = setTimeout(() => {
    logger.error('stop did not finish within the deadline; exiting');
    process.exit(1);
  }, config.shutdown.drainTimeoutMs + STOP_TEARDOWN_MS);
  hard.unref();
  const report = await daemon.stop(reason);
  clearTimeout(hard);
  const code = report.failures.length === 0 ? 0 : 1;
  // everything is closed; if some library still holds a handle, do not hang until systemd kills us
  setTimeout(() => process.exit(code), 3000).unref();
  return code;
}
