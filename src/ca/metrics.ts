// The CA service's Prometheus metrics (:15014/metrics, Istio's istiod monitoring port): requests by
// outcome and how long they took, and when each trusted root expires. A CA that refuses or is down
// shows here within a scrape, not hours later as agents' certificates near their expiry.
import { X509Certificate } from 'node:crypto';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { VERSION } from '../version.ts';
import { PEM_CERTIFICATE } from '../identity/pem.ts';
import { registerMemoryMetrics } from '../memory-metrics.ts';
import type { MemoryPressure } from '../memory-target.ts';

/** `issued`, `trust_bundle`, `healthz`, or the refusal's code (docs/errors.md). */
export type CaOutcome = string;

export class CaMetrics {
  readonly registry = new Registry();
  readonly #requests: Counter<'outcome'>;
  readonly #duration: Histogram<'outcome'>;

  /**
   * `roots`: the trust bundle (PEM) and the signing root's fingerprint, read at scrape time;
   * `memory`: the memory target's state, once the service is up.
   */
  constructor(roots: () => { trustBundlePem: string; signingFingerprint: string }, memory: () => MemoryPressure | undefined = () => undefined) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    new Gauge({ name: 'meshlet_build_info', help: 'The meshlet version and the Node.js version this process runs', labelNames: ['version', 'node_version'], registers })
      .set({ version: VERSION, node_version: process.version }, 1);
    registerMemoryMetrics(registers, memory);
    this.#requests = new Counter({ name: 'meshlet_ca_requests_total', help: 'CA requests by outcome: issued, trust_bundle, healthz, or the refusal code (bad_token, identity_not_allowed, rate_limited, ...)', labelNames: ['outcome'], registers });
    this.#duration = new Histogram({
      name: 'meshlet_ca_request_duration_seconds', help: 'Time from a CA request to its answer, by outcome (issued or refused)', labelNames: ['outcome'], registers,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    });
    new Gauge({
      name: 'meshlet_ca_root_expiry_timestamp_seconds', help: 'When each root of the trust bundle expires (signing: the one that signs now)', labelNames: ['fingerprint', 'signing'], registers,
      collect() {
        this.reset();
        const r = roots();
        for (const pem of r.trustBundlePem.match(PEM_CERTIFICATE) ?? []) {
          const cert = new X509Certificate(pem);
          this.set({ fingerprint: cert.fingerprint256, signing: String(cert.fingerprint256 === r.signingFingerprint) }, Date.parse(cert.validTo) / 1000);
        }
      },
    });
  }

  request(outcome: CaOutcome, seconds: number): void {
    this.#requests.inc({ outcome });
    this.#duration.observe({ outcome: outcome === 'issued' ? 'issued' : 'refused' }, seconds);
  }

  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
