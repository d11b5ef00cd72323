import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';

/** A TCP port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** Unique id for topics, scanner ids and temp dirs, so parallel test files never see each other's messages. */
export function uniqueId(prefix = 't'): string {
  return `${prefix}-${process.pid}-${randomBytes(4).toString('hex')}`;
}

export const MOSQUITTO_URL = process.env.FOCUSD_TEST_MQTT_URL ?? 'mqtt://127.0.0.1:1883';
