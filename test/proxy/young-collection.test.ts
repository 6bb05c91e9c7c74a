import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { describe, it } from 'node:test';
import pino from 'pino';
import { DataPlane } from '../../src/proxy/data-plane.ts';
import { adoptForPooledReads, pooledConnect } from '../../src/proxy/read-buffers.ts';
import { relay, type RelayResult, socketEnd } from '../../src/proxy/relay.ts';
import { freshChunks, YoungCollection } from '../../src/proxy/young-collection.ts';
import { testSettings } from '../support/proxy-context.ts';

const MIB = 1024 * 1024;
/** The agent's default (`--young-collection 4`). */
const COLLECT_EVERY_BYTES = 4 * MIB;
const CHUNK = 16 * 1024;

/**
 * Hands over `totalBytes` in fresh 16 KiB buffers outside the heap, each dropped at once as a
 * relayed chunk is once written, noting each to `young`; the most array-buffer memory held above
 * the start, in MiB.
 */
function churn(young: YoungCollection, totalBytes: number): number {
  const start = process.memoryUsage().arrayBuffers;
  let most = 0;
  for (let sent = 0; sent < totalBytes; sent += CHUNK) {
    const chunk = Buffer.allocUnsafeSlow(CHUNK);
    chunk[0] = 1;
    young.note(chunk.length);
    if (sent % (256 * 1024) === 0) most = Math.max(most, process.memoryUsage().arrayBuffers - start);
  }
  return most / MIB;
}

describe('young collections after every few MiB of fresh chunks', () => {
  it('collects once per `everyBytes`, the bytes past it counting towards the next', () => {
    let collected = 0;
    const young = new YoungCollection(4 * MIB, () => { collected++; });
    for (let i = 0; i < 10; i++) young.note(MIB);
    assert.equal(collected, 2);
    assert.equal(young.collections(), 2);
    young.note(MIB);
    young.note(MIB);
    assert.equal(collected, 3, 'the 12th MiB completes the third 4 MiB');
    young.note(3.5 * MIB);
    young.note(MIB);
    assert.equal(collected, 4, 'the half MiB past the fourth 4 MiB carried over');
    young.note(3 * MIB);
    assert.equal(collected, 4);
    young.note(0.5 * MIB);
    assert.equal(collected, 5, '0.5 + 3 + 0.5');
    young.note(40 * MIB);
    assert.equal(collected, 6, 'one collection frees a chunk spanning several intervals');
    young.setEvery(0);
    young.note(40 * MIB);
    assert.equal(collected, 6, '0: never');
  });

  it('keeps dead chunks to a few MiB, where V8 alone lets tens of MiB pile up', () => {
    // Warm both paths up so that neither pays for a first compilation inside the measurement.
    churn(new YoungCollection(0), 4 * MIB);
    churn(new YoungCollection(COLLECT_EVERY_BYTES), 4 * MIB);
    const alone = churn(new YoungCollection(0), 48 * MIB);
    const collected = churn(new YoungCollection(COLLECT_EVERY_BYTES), 48 * MIB);
    assert.ok(collected < COLLECT_EVERY_BYTES / MIB + 4, `with collections at most ${collected.toFixed(1)} MiB held`);
    assert.ok(alone > 16, `without, ${alone.toFixed(1)} MiB held (the control: V8 left them)`);
  });
});

describe('a data plane sets its thread\'s interval from its settings (--young-collection)', () => {
  it('collects every youngCollectionBytes once built, and never with 0', async () => {
    const deps = { log: pino({ level: 'silent' }), stallProbe: { probe: () => undefined, reset: (s: net.Socket) => s.destroy() } };
    for (const [every, expected] of [[2 * MIB, 3], [0, 0]] as const) {
      const data = new DataPlane(testSettings('n', 0, { youngCollectionBytes: every }), deps);
      try {
        const before = freshChunks.collections();
        for (let i = 0; i < 6; i++) freshChunks.note(MIB);
        assert.equal(freshChunks.collections() - before, expected, `every ${every} bytes`);
      } finally {
        await data.close(() => 0);
        freshChunks.setEvery(0);
      }
    }
  });
});

describe('relay notes the chunks it forwards in fresh buffers', () => {
  async function relayed(pooled: boolean, bytes: number): Promise<number> {
    const app = net.createServer({ allowHalfOpen: true }, (s) => { s.resume(); s.once('end', () => s.end()); });
    await new Promise<void>((r) => app.listen(0, '127.0.0.1', r));
    const port = (app.address() as net.AddressInfo).port;
    let result: Promise<RelayResult> | undefined;
    const proxy = net.createServer({ allowHalfOpen: true, pauseOnConnect: pooled }, (accepted) => {
      const client = pooled ? adoptForPooledReads(accepted) : accepted;
      const up = pooled ? pooledConnect('127.0.0.1', port) : net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
      result = relay(socketEnd(client), socketEnd(up));
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    // As a data plane sets it (data-plane.ts, from --young-collection).
    freshChunks.setEvery(COLLECT_EVERY_BYTES);
    const before = freshChunks.collections();
    try {
      const c = net.connect({ port: (proxy.address() as net.AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
      c.resume();
      c.end(randomBytes(bytes));
      await new Promise<void>((r) => c.once('close', () => r()));
      const r = await result!;
      assert.equal(r.aToB, bytes);
      return freshChunks.collections() - before;
    } finally {
      freshChunks.setEvery(0);
      app.close();
      proxy.close();
    }
  }

  it('collects the young generation every few MiB read into new buffers', async () => {
    assert.equal(await relayed(false, 6 * COLLECT_EVERY_BYTES), 6);
  });

  it('not for sockets reading into reused buffers, which leave nothing to collect', async () => {
    assert.equal(await relayed(true, 6 * COLLECT_EVERY_BYTES), 0);
  });
});
