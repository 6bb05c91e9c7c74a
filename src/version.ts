// meshlet's version, from its package.json (shipped with it, in the image too): `meshlet --version`,
// the agent's first log line and the meshlet_build_info metric.
import { readFileSync } from 'node:fs';

export const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
