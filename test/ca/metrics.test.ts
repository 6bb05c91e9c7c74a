// The CA's metrics: every request counted by outcome with its duration, and each root's expiry, so a
// CA that refuses or is about to lose its root shows within a scrape.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { describe, it } from 'node:test';
import { request } from 'undici';
import { CaMetrics } from '../../src/ca/metrics.ts';
import type { CaService } from '../../src/ca/server.ts';
import { caClient, postCsr, startTestCa, TOKENS, WEB, workloadCsr } from '../support/ca.ts';
import { parseMetrics, sum } from '../support/prometheus.ts';

describe('CA metrics', () => {
  it('counts requests by outcome and duration, and exports when each root expires', async () => {
    let service: CaService | undefined;
    const metrics = new CaMetrics(() => service!.roots);
    const ca = await startTestCa({ onRequest: (outcome, seconds) => metrics.request(outcome, seconds) });
    service = ca.service;
    const client = caClient(ca.rootPem);
    try {
      assert.equal((await postCsr(ca.url, client, { token: TOKENS['node-a'], csr: await workloadCsr(WEB) })).status, 200);
      assert.equal((await postCsr(ca.url, client, { token: 'forged-token-0123456789', csr: 'x' })).status, 401);
      assert.equal((await postCsr(ca.url, client, { token: TOKENS['node-b'], csr: await workloadCsr(WEB) })).status, 403);
      const bundle = await request(`${ca.url}/v1/trust-bundle`, { dispatcher: client });
      await bundle.body.text();
      const m = parseMetrics((await metrics.text()).body);
      const outcome = (o: string) => sum(m, 'meshlet_ca_requests_total', { outcome: o });
      assert.deepEqual([outcome('issued'), outcome('bad_token'), outcome('identity_not_allowed'), outcome('trust_bundle')], [1, 1, 1, 1]);
      assert.equal(sum(m, 'meshlet_ca_request_duration_seconds_count', { outcome: 'issued' }), 1);
      assert.equal(sum(m, 'meshlet_ca_request_duration_seconds_count', { outcome: 'refused' }), 3);
      const root = new X509Certificate(ca.rootPem);
      assert.equal(sum(m, 'meshlet_ca_root_expiry_timestamp_seconds', { fingerprint: root.fingerprint256, signing: 'true' }), Date.parse(root.validTo) / 1000);
      assert.equal(sum(m, 'meshlet_build_info'), 1);
    } finally {
      await client.close();
      await ca.close();
    }
  });
});
