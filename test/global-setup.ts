import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { PrivateMosquitto } from './helpers/mosquitto.js';

// Once per test run: build dist/ (tests that fork the real `focusd` executable need it to match the sources) and
// start this run's own Mosquitto on a free loopback port; MOSQUITTO_URL (test/helpers/net.ts) points the tests at it.
// FOCUSD_TEST_MQTT_URL set by the caller names an existing broker instead.
export default async function setup(): Promise<() => Promise<void>> {
  const root = fileURLToPath(new URL('..', import.meta.url));
  execFileSync(process.execPath, [fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url)), '-p', '.'], {
    cwd: root,
    stdio: 'inherit',
  });
  if (process.env.FOCUSD_TEST_MQTT_URL) return async () => undefined;
  const broker = new PrivateMosquitto();
  await broker.start();
  process.env.FOCUSD_TEST_MQTT_URL = broker.url;
  process.stderr.write(`test broker: mosquitto at ${broker.url}\n`);
  return async () => broker.stop();
}
