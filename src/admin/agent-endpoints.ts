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
import { Succession, successionSocket } from './succession.ts';

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

/**
 * Listens on the admin, readiness and (when on) metrics ports, then takes its place in the node's
 * succession (succession.ts): readiness is answered by the newest agent only. Resolves to the
 * servers and the succession, which the agent closes first when it stops.
 */
export async function listenAgentEndpoints(e: AgentEndpoints): Promise<{ servers: http.Server[]; succession: Succession }> {
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
  const listenReady = () => listen(ready, { port: ports.readiness, host: e.config.readinessAddress, reusePort: true });
  await Promise.all([
    listen(admin, { port: ports.admin, host: e.config.adminAddress, reusePort: true }),
    listenReady(),
    ...(metricsServer ? [listen(metricsServer, { port: ports.metrics, host: e.config.metricsAddress, reusePort: true })] : []),
  ]);
  // Listening first, so that the older agent stops answering only once this one answers.
  const succession = new Succession(successionSocket(ports.readiness), {
    succeeded: () => { ready.close(); },
    resumed: () => { listenReady().catch((err: Error) => e.log.error({ err: err.message }, 'cannot answer readiness again')); },
  }, e.log);
  await succession.start();
  return { servers: [admin, ready, ...(metricsServer ? [metricsServer] : [])], succession };
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
