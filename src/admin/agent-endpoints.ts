// The agent's own HTTP endpoints: the admin API (config dump, log level), readiness and metrics. Up
// from the start, so "not ready, waiting for X" can be asked.
import type http from 'node:http';
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/agent.ts';
import { LOG_LEVELS, type LogLevel } from '../config/common.ts';
import { listen } from '../proxy/listeners.ts';
import { adminLogger, setLogLevel } from '../telemetry/log.ts';
import type { MeshMetrics } from '../telemetry/metrics.ts';
import { AdminRequestError, createAdminServer, createMetricsServer, createReadinessServer, type Readiness } from './server.ts';

export interface AgentEndpoints {
  config: Pick<AgentConfig, 'nodeName' | 'ports' | 'adminAddress' | 'readinessAddress' | 'metricsAddress'>;
  /** The agent's root logger: POST /logging sets the level of its whole family. */
  log: Logger;
  readiness: Readiness;
  metrics: MeshMetrics | undefined;
  configDump(): Promise<unknown>;
  /** Told of a level change through the admin API (the data-plane workers' loggers). */
  onLogLevel?(level: LogLevel): void;
}

/** Listens on the admin, readiness and (when on) metrics ports; resolves to the servers. */
export async function listenAgentEndpoints(e: AgentEndpoints): Promise<http.Server[]> {
  // Admin API changes, logged whatever the level.
  const adminLog = adminLogger(e.log, { node: e.config.nodeName });
  const admin = createAdminServer(
    { '/config_dump': () => e.configDump(), '/logging': () => ({ level: e.log.level }) },
    { '/logging': (q) => { const r = setLevel(e.log, adminLog, q.get('level')); e.onLogLevel?.(r.level); return r; } },
  );
  const ready = createReadinessServer(e.readiness);
  const metrics = e.metrics;
  const metricsServer = metrics ? createMetricsServer(() => metrics.text()) : undefined;
  const { ports } = e.config;
  // reusePort lets an upgraded agent listen beside this one during a rollout.
  await Promise.all([
    listen(admin, { port: ports.admin, host: e.config.adminAddress, reusePort: true }),
    listen(ready, { port: ports.readiness, host: e.config.readinessAddress, reusePort: true }),
    ...(metricsServer ? [listen(metricsServer, { port: ports.metrics, host: e.config.metricsAddress, reusePort: true })] : []),
  ]);
  return [admin, ready, ...(metricsServer ? [metricsServer] : [])];
}

/** POST /logging?level=debug: every logger of the agent, at once, without a restart. */
function setLevel(root: Logger, adminLog: Logger, level: string | null): { level: LogLevel; was: string } {
  if (!level || !(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new AdminRequestError(`level must be one of ${LOG_LEVELS.join(', ')}`);
  }
  const was = root.level;
  // Before it applies, on a logger no level silences: a change to `silent` is itself on record.
  adminLog.warn({ to: level, from: was }, 'log level changed through the admin API');
  setLogLevel(root, level as LogLevel);
  return { level: level as LogLevel, was };
}
