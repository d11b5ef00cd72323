import { randomBytes } from 'node:crypto';

export { freePort } from '../../core/net.js';

/** Unique id for topics, scanner ids and temp dirs, so parallel test files never see each other's messages. */
export function uniqueId(prefix = 't'): string {
  return `${prefix}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

export const MOSQUITTO_URL = process.env.FOCUSD_TEST_MQTT_URL ?? 'mqtt://127.0.0.1:1883';
