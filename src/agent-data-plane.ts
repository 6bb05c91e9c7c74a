// The agent's data plane, built from its configuration: in the agent's own thread with one
// worker, as N worker threads otherwise (proxy/workers.ts).
import type { Logger } from 'pino';
import type { AgentConfig } from './config/agent.ts';
import { DataPlane } from './proxy/data-plane.ts';
import { type DataPlaneHost, inThisThread } from './proxy/host.ts';
import type { DataPlaneSettings } from './proxy/snapshot.ts';
import { DataPlaneWorkers } from './proxy/workers.ts';
import type { MeshMetrics } from './telemetry/metrics.ts';

export interface DataPlaneParts {
  log: Logger;
  metrics: MeshMetrics | undefined;
  /** The probe gate's ensure (capture/probe-gate.ts); none in a sidecar. */
  vouchFor?(podIp: string): Promise<void> | undefined;
}

export function createDataPlane(config: AgentConfig, parts: DataPlaneParts): DataPlaneHost {
  const settings = dataPlaneSettings(config);
  const { log, metrics, vouchFor } = parts;
  const local = { log, ...(metrics ? { telemetry: metrics } : {}), ...(vouchFor ? { vouchFor } : {}) };
  if (config.workers === 1) return inThisThread(new DataPlane(settings, local));
  // Data plane 0 in this thread (a thread's memory saved), the others in worker threads.
  return new DataPlaneWorkers({
    workers: config.workers, minWorkers: config.minWorkers, settings, log, inThisThread: local,
    logBase: { node: config.nodeName, ...(config.sidecar ? { sidecar: `${config.sidecar.namespace}/${config.sidecar.name}` } : {}) },
    ...(metrics ? { absorb: (batch) => metrics.absorb(batch) } : {}),
    // A quarter of the gate's TTL: an entry the gate vouches for lives half a TTL more at least (probe-gate.ts ensure).
    ...(vouchFor ? { vouch: { ensure: vouchFor, freshMs: config.probeGateTtlMs / 4 } } : {}),
  });
}

/** The data plane's part of the configuration: what does not change over the agent's life. */
function dataPlaneSettings(config: AgentConfig): DataPlaneSettings {
  return {
    nodeName: config.nodeName,
    ...(config.sidecar ? { sidecar: config.sidecar } : {}),
    ports: { outbound: config.ports.outbound, inboundPlaintext: config.ports.inboundPlaintext, tunnel: config.ports.tunnel },
    agentPorts: Object.values(config.ports),
    connectTimeoutMs: config.connectTimeoutMs, handshakeTimeoutMs: config.handshakeTimeoutMs, drainMs: config.drainMs, idleTimeoutMs: config.idleTimeoutMs,
    preserveSource: config.preserveSourceIp ? { sourcePorts: config.sourcePorts } : false,
    accessLog: config.accessLog,
    limits: {
      maxConnections: config.maxConnections, maxPerSource: config.maxConnectionsPerSource,
      maxPendingHandshakes: config.maxPendingHandshakes, maxPendingPerSource: config.maxPendingHandshakesPerSource, handshakeRate: config.handshakeRate,
    },
    tunnelStallTimeoutMs: config.tunnelStallTimeoutMs,
    tunnelQueueBudgetBytes: config.tunnelQueueBudgetMiB * 1024 * 1024,
    youngCollectionBytes: config.youngCollectionMiB * 1024 * 1024,
  };
}
