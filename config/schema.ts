// The one home of every default: the sections below are merged into one convict schema.
import { controller } from './sections/controller.js';
import { core } from './sections/core.js';
import { ingest } from './sections/ingest.js';
import { mqtt } from './sections/mqtt.js';
import { reports } from './sections/reports.js';
import { scoring } from './sections/scoring.js';

export const schema = { ...core, ...ingest, ...scoring, ...mqtt, ...controller, ...reports };
