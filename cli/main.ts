import { checkConfigMain } from './check-config.js';
import { demoMain } from './demo.js';
import { reportMain } from './report.js';
import { runMain } from './run.js';
import { scoreMain } from './score.js';

const USAGE = `usage: focusd <command> [options]

commands:
  run           run the daemon (systemd: Type=notify)         focusd run --config /etc/focusd/focusd.yaml
  check-config  validate a configuration, name every problem  focusd check-config [--config FILE] [--print] [--schema]
  score         score image files offline, one JSON line each focusd score [--format jsonl|csv] PATH...
  replay        send tiles to a daemon as a scanner would     focusd replay -c FILE DIR (or --endpoint URL --pattern P)
  demo          daemon + embedded broker + a closed-loop scan focusd demo
  simulate      virtual scanner obeying the daemon's commands focusd simulate --help
  calibrate     fit the model to this instrument's focus stack focusd calibrate STACK_DIR --out DIR
  report        drift report of the tile history on demand    focusd report [--from ISO] [--to ISO] [--html] [--out DIR]

Configuration: --config FILE (JSON or YAML) or FOCUSD_CONFIG, environment FOCUSD_*, and the options named in
\`focusd check-config --schema\`. See README.md.`;

type Command = (argv: string[]) => Promise<number>;

const commands: Record<string, Command> = {
  run: runMain,
  'check-config': checkConfigMain,
  score: scoreMain,
  demo: demoMain,
  report: reportMain,
  replay: async (argv) => (await import('./replay.js')).replayMain(argv),
  calibrate: async (argv) => (await import('./calibrate.js')).calibrateMain(argv),
  simulate: async (argv) => (await import('./simulate.js')).simulateMain(argv),
};

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(USAGE + '\n');
    return cmd ? 0 : 64;
  }
  if (cmd === '--version') {
    const { DAEMON_VERSION } = await import('../daemon/daemon.js');
    process.stdout.write(DAEMON_VERSION + '\n');
    return 0;
  }
  const command = commands[cmd];
  if (!command) {
    process.stderr.write(`focusd: unknown command "${cmd}"\n\n${USAGE}\n`);
    return 64;
  }
  return command(rest);
}
