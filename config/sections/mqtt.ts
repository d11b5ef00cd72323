// MQTT output: broker, credentials, topics.
const topicOpts = (name: string, qos: 0 | 1 | 2, retain: boolean, what: string) => ({
  qos: { doc: `QoS of the ${name} topic (${what}).`, format: [0, 1, 2], default: qos },
  retain: { doc: `Retain flag of the ${name} topic.`, format: Boolean, default: retain },
});

export const mqtt = {
  mqtt: {
    url: {
      doc: 'Broker URL (mqtt://, mqtts://, ws://, wss://) or "embedded" to run an in-process broker on mqtt.embedded.port.',
      format: 'mqtt-url',
      default: 'embedded',
      env: 'FOCUSD_MQTT_URL',
      arg: 'mqtt-url',
    },
    embedded: {
      host: { doc: 'Address the embedded broker listens on.', format: String, default: '127.0.0.1', env: 'FOCUSD_MQTT_EMBEDDED_HOST' },
      port: {
        doc: 'Port of the embedded broker (not 1883, so it does not clash with a system Mosquitto).',
        format: 'port',
        default: 1884,
        env: 'FOCUSD_MQTT_EMBEDDED_PORT',
      },
    },
    baseTopic: {
      doc: 'Prefix of every topic. Empty: focusd/<scanner.id>.',
      format: String,
      default: '',
      env: 'FOCUSD_MQTT_BASE_TOPIC',
      arg: 'mqtt-base-topic',
    },
    clientId: { doc: 'MQTT client id. Empty: focusd-<scanner.id>.', format: String, default: '', env: 'FOCUSD_MQTT_CLIENT_ID' },
    username: { doc: 'MQTT user name.', format: String, default: '', env: 'FOCUSD_MQTT_USERNAME' },
    password: {
      doc: 'MQTT password. Prefer passwordFile or the systemd credential "mqtt-password".',
      format: String,
      default: '',
      sensitive: true,
      env: 'FOCUSD_MQTT_PASSWORD',
    },
    passwordFile: {
      doc: 'File holding the MQTT password (first line). Empty: $CREDENTIALS_DIRECTORY/mqtt-password when systemd LoadCredential provides it.',
      format: String,
      default: '',
      env: 'FOCUSD_MQTT_PASSWORD_FILE',
    },
    tls: {
      ca: { doc: 'PEM file of the CA that signed the broker certificate (mqtts/wss).', format: String, default: '', env: 'FOCUSD_MQTT_CA' },
      cert: { doc: 'PEM client certificate for mutual TLS; needs tls.key.', format: String, default: '', env: 'FOCUSD_MQTT_CERT' },
      key: { doc: 'PEM private key of the client certificate; needs tls.cert.', format: String, default: '', env: 'FOCUSD_MQTT_KEY' },
      rejectUnauthorized: { doc: 'Verify the broker certificate.', format: Boolean, default: true },
    },
    keepaliveS: { doc: 'MQTT keepalive in seconds.', format: 'positive-int', default: 30 },
    reconnectMs: { doc: 'Delay between reconnect attempts.', format: 'positive-int', default: 2000 },
    statsIntervalS: { doc: 'Seconds between stats messages; 0 disables them.', format: 'nat', default: 10, env: 'FOCUSD_STATS_INTERVAL_S' },
    topics: {
      status: topicOpts('status', 1, true, 'online/offline, last will'),
      tile: topicOpts('tile', 0, false, 'one message per scored tile'),
      action: topicOpts('action', 1, false, 're-acquisition and z-offset commands; QoS 1 so the outbox waits for PUBACK'),
      error: topicOpts('error', 1, false, 'rejected messages and skipped tiles'),
      stats: topicOpts('stats', 0, true, 'periodic counters'),
    },
  },
};
