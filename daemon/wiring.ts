import { EmbeddedBroker } from '../adapters/embedded-broker.js';
import { createControlApi, MqttAdapter } from '../adapters/mqtt.js';
import { Store } from '../adapters/store.js';
import type { Context } from '../core/context.js';
import { Controller } from './controller.js';
import { Health } from './health.js';
import type { Component } from '../core/lifecycle.js';
import { Outbox } from './outbox.js';
import { DriftReporter } from './reports.js';

/** The MQTT side of the daemon, built in start order: store → embedded broker → mqtt → outbox → controller → reports → health. */
export interface MqttSide {
  components: Component[];
  store: Store;
  broker: EmbeddedBroker;
  mqtt: MqttAdapter;
  outbox: Outbox;
  controller: Controller;
  reports: DriftReporter;
  health: Health;
}

export interface MqttSideDeps {
  /** the daemon's status (engine, model, version, ingest endpoint/pattern...): merged into status and stats messages. */
  status: () => Record<string, unknown>;
}

export function buildMqttSide(ctx: Context, deps: MqttSideDeps): MqttSide {
  const store = new Store(ctx);
  const broker = new EmbeddedBroker(ctx);
  const controller = new Controller(ctx, { store });
  let outbox: Outbox | null = null;
  const mqtt = new MqttAdapter(ctx, {
    // actions waiting for the broker are part of what status and stats tell
    statusProvider: () => ({ ...deps.status(), outbox_pending: outbox?.pending ?? null }),
    control: createControlApi(ctx, store),
    predict: (h) => controller.predict(h),
    credentials: () => broker.daemonCredentials,
  });
  outbox = new Outbox(ctx, { store, publisher: mqtt });
  const reports = new DriftReporter(ctx, store, { publish: (m) => mqtt.publishReport(m) });
  const health = new Health(ctx, { mqtt, store, outbox });
  return { components: [store, broker, mqtt, outbox, controller, reports, health], store, broker, mqtt, outbox, controller, reports, health };
}
