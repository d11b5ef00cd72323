import { randomBytes } from 'node:crypto';

export { freePort } from '../../core/net.js';

/** Unique id for topics, scanner ids and temp dirs, so parallel test files never see each other's messages. */
export function uniqueId(prefix = 't'): string {
  return `${prefix}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** This test run's own broker, started by test/global-setup.ts (or the one FOCUSD_TEST_MQTT_URL names). */
export const MOSQUITTO_URL = (() => {
  const url = process.env.FOCUSD_TEST_MQTT_URL;
  if (!url) throw new Error('FOCUSD_TEST_MQTT_URL is not set: run the tests through vitest (test/global-setup.ts starts a broker)');
  return url;
})();
