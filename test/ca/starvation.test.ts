// Attack: starve the CA. 500 clients from one address declare a body and trickle it a byte at a
// time, and another address floods it with requests, while the agents of two nodes each ask for 50
// certificates. Without a token nothing may hold the CA's capacity, a slow body ends within seconds,
// and the agents are served as quickly as with nobody attacking (within a generous margin).
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { caClient, postCsr, startTestCa, type TestCa, TOKENS, DB, WEB, workloadCsr } from '../support/ca.ts';

/** 50 certificates for each node's agent, 4 requests at a time per agent; each request's time. */
async function agentsRun(ca: TestCa, csrs: { web: string[]; db: string[] }): Promise<{ statuses: number[]; ms: number[] }> {
  const statuses: number[] = [];
  const ms: number[] = [];
  const agent = async (token: string, list: string[]) => {
    const client = caClient(ca.rootPem, '127.0.0.1');
    try {
      let next = 0;
      await Promise.all(Array.from({ length: 4 }, async () => {
        while (next < 50) {
          const csr = list[next++ % list.length] as string;
          const t0 = performance.now();
          const r = await postCsr(ca.url, client, { token, csr });
          ms.push(performance.now() - t0);
          statuses.push(r.status);
        }
      }));
    } finally {
      await client.close();
    }
  };
  await Promise.all([agent(TOKENS['node-a'], csrs.web), agent(TOKENS['node-b'], csrs.db)]);
  return { statuses, ms };
}

const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.99)] as number;

/** A client that declares a 1,000-byte body and sends it one byte every 500 ms. */
function trickler(ca: TestCa, localAddress: string, token: string): { socket: tls.TLSSocket; closedAt: Promise<number> } {
  const url = new URL(ca.url);
  const socket = tls.connect({ socket: net.connect({ host: url.hostname, port: Number(url.port), localAddress }), host: url.hostname, ca: ca.rootPem });
  let timer: NodeJS.Timeout | undefined;
  socket.on('secureConnect', () => {
    socket.write(`POST /v1/certificates HTTP/1.1\r\nHost: ca\r\nContent-Type: application/json\r\nAuthorization: Bearer ${token}\r\nContent-Length: 1000\r\n\r\n`);
    timer = setInterval(() => socket.write('{'), 500);
  });
  socket.on('error', () => undefined);
  socket.resume();
  const closedAt = new Promise<number>((r) => socket.once('close', () => { clearInterval(timer); r(Date.now()); }));
  return { socket, closedAt };
}

describe('the CA cannot be starved', () => {
  let ca: TestCa;
  let csrs: { web: string[]; db: string[] };
  before(async () => {
    // The service's own limits, as `meshlet ca serve` runs it (the test CA's rate limit is raised
    // only so that the agents' 100 requests from one loopback address are not themselves limited).
    ca = await startTestCa({ ratePerSecond: 200, burst: 400 });
    csrs = { web: await Promise.all([1, 2, 3].map(() => workloadCsr(WEB))), db: await Promise.all([1, 2, 3].map(() => workloadCsr(DB))) };
  });
  after(async () => { await ca?.close(); });

  it('serves the agents while 500 clients trickle bodies and one address floods it', async (t) => {
    const quiet = await agentsRun(ca, csrs);
    assert.deepEqual(new Set(quiet.statuses), new Set([200]));

    const startedAt = Date.now();
    // 500 tricklers from one address: half with a forged token, half with a near miss of a real one.
    const tricklers = Array.from({ length: 500 }, (_, i) => trickler(ca, '127.0.0.2', i % 2 ? 'forged-token-0123456789' : `${TOKENS['node-a']}x`));
    const flooder = caClient(ca.rootPem, '127.0.0.3');
    let flooding = true;
    const flood = (async () => {
      let sent = 0;
      while (flooding) {
        await Promise.all(Array.from({ length: 50 }, () => postCsr(ca.url, flooder, { token: 'forged-token-0123456789', body: '{"csr":"x"}' }).catch(() => undefined)));
        sent += 50;
      }
      return sent;
    })();
    try {
      // Once the tricklers are all in (each has a connection and has sent its headers).
      await new Promise((r) => setTimeout(r, 1_500));
      const attacked = await agentsRun(ca, csrs);
      assert.deepEqual(new Set(attacked.statuses), new Set([200]), `the agents were refused: ${JSON.stringify(attacked.statuses.filter((s) => s !== 200))}`);
      t.diagnostic(`agents' p99 ${p99(quiet.ms).toFixed(0)} ms quiet, ${p99(attacked.ms).toFixed(0)} ms under attack`);
      assert.ok(p99(attacked.ms) < 10 * p99(quiet.ms) + 1_000, `p99 ${p99(attacked.ms)} ms under attack against ${p99(quiet.ms)} ms`);
      // A body still trickling after a few seconds is cut off.
      const closed = await Promise.all(tricklers.map((c) => c.closedAt));
      const longest = Math.max(...closed) - startedAt;
      t.diagnostic(`the last trickler was cut off ${longest} ms after it began`);
      assert.ok(longest < 15_000, `a trickler held its connection ${longest} ms`);
    } finally {
      flooding = false;
      const sent = await flood;
      t.diagnostic(`flood: ${sent} requests from one address`);
      for (const c of tricklers) c.socket.destroy();
      await flooder.close();
    }
  });
});
