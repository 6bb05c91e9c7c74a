// The stall watch: sessions whose peer acknowledges nothing of their queued data are reset after
// the stall timeout, stalled ones at once (largest first) while all queues exceed the budget, and
// moving ones never. With a scripted probe and clock, then with real sockets on loopback.
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { resetSocket, sendProgress, type SendProgress } from '../../../src/capture/socket.ts';
import { StallWatch, type StallReason } from '../../../src/proxy/tunnel/stall-watch.ts';
import { eventually } from '../../support/wait.ts';

/** A stand-in socket: watch() needs only 'close' and `destroyed`. */
class FakeSocket extends net.Socket {
  progress: SendProgress = { queued: 0, acked: 0n };
  reset = false;
}

function scripted(stallMs: number, budgetBytes: number) {
  let now = 0;
  const ended: Array<{ reason: StallReason; peer: string; queued: number }> = [];
  const destroyed = new Set<string>();
  const watch = new StallWatch({
    stallMs, budgetBytes, intervalMs: 60_000, now: () => now,
    probe: (s) => ((s as FakeSocket).reset ? undefined : (s as FakeSocket).progress),
    reset: (s) => { (s as FakeSocket).reset = true; },
    onStall: (reason, peer, queued) => ended.push({ reason, peer, queued }),
  });
  const add = (peer: string) => {
    const s = new FakeSocket();
    watch.watch(s, { destroy: () => destroyed.add(peer) }, peer);
    return s;
  };
  return { watch, add, ended, destroyed, tick: (ms: number) => { now += ms; watch.check(); } };
}

describe('stall watch', () => {
  it('resets a socket whose queue sees no acknowledgement for the stall timeout, and not before', () => {
    const t = scripted(5_000, 1 << 30);
    const stuck = t.add('stuck');
    const moving = t.add('moving');
    const idle = t.add('idle');
    stuck.progress = { queued: 1_000_000, acked: 10n };
    t.tick(1_000); // first sight
    // From the next check on, the stuck socket has seen no acknowledgement: 5 s of that end it.
    for (let i = 0; i <= 5; i++) {
      moving.progress = { queued: 1_000_000, acked: BigInt(i * 1000) };
      t.tick(1_000);
      if (i < 5) assert.deepEqual(t.ended, [], `reset after ${i} s of a 5 s stall`);
    }
    assert.deepEqual(t.ended, [{ reason: 'stalled', peer: 'stuck', queued: 1_000_000 }]);
    assert.ok(stuck.reset && t.destroyed.has('stuck'), 'the socket and its session were not ended');
    assert.ok(!moving.reset && !idle.reset, 'a moving or empty socket was reset');
    assert.equal(t.watch.size, 2);
  });

  it('over the budget resets stalled sockets at once, largest first, until under it; moving ones stay', () => {
    const t = scripted(60_000, 25);
    const a = t.add('a');
    const b = t.add('b');
    const c = t.add('c');
    a.progress = { queued: 10, acked: 1n };
    b.progress = { queued: 20, acked: 1n };
    c.progress = { queued: 30, acked: 1n };
    t.tick(1_000); // first sight: none is known to be stalled yet
    assert.equal(t.ended.length, 0);
    c.progress = { queued: 30, acked: 2n }; // c moves: never a budget victim
    t.tick(1_000);
    // 60 queued > 25, and only stalled sockets may go: b (20), then a (10). c moves, so it stays
    // although the total (30) is still over.
    assert.deepEqual(t.ended.map((e) => `${e.peer}:${e.reason}`), ['b:queue_budget', 'a:queue_budget']);
    assert.ok(!c.reset);
  });

  it('stops at the budget: a stalled socket under it waits for the stall timeout', () => {
    const t = scripted(60_000, 25);
    const big = t.add('big');
    const small = t.add('small');
    big.progress = { queued: 20, acked: 1n };
    small.progress = { queued: 10, acked: 1n };
    t.tick(1_000);
    t.tick(1_000);
    assert.deepEqual(t.ended.map((e) => e.peer), ['big']);
    t.tick(59_000);
    assert.deepEqual(t.ended.map((e) => e.peer), ['big']);
    t.tick(1_000);
    assert.deepEqual(t.ended.map((e) => `${e.peer}:${e.reason}`), ['big:queue_budget', 'small:stalled']);
  });

  it('forgets a socket once it closes', async () => {
    const t = scripted(1_000, 1 << 30);
    const s = t.add('gone');
    assert.equal(t.watch.size, 1);
    s.destroy();
    await eventually('the watch to forget a closed socket', () => t.watch.size === 0);
  });

  it('on loopback: resets a connection whose reader stopped, and leaves one read slowly', async () => {
    const held: net.Socket[] = [];
    const server = net.createServer((s) => { held.push(s); });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    const reasons: StallReason[] = [];
    const watch = new StallWatch({
      stallMs: 1_000, budgetBytes: 1 << 30, intervalMs: 200, probe: sendProgress, reset: resetSocket,
      onStall: (reason) => reasons.push(reason),
    });
    const open = () => new Promise<net.Socket>((r) => { const c = net.connect(port, '127.0.0.1', () => r(c)); c.on('error', () => undefined); });
    try {
      const stopped = await open();
      const slow = await open();
      await eventually('both accepted', () => held.length === 2);
      const [stoppedPeer, slowPeer] = held as [net.Socket, net.Socket];
      stoppedPeer.pause();
      // The slow reader takes 64 KB every 100 ms: always behind, never stopped.
      slowPeer.pause();
      const drip = setInterval(() => { while (slowPeer.read(65_536) !== null) if (Math.random() < 0.5) break; }, 100);
      let sessionsEnded = 0;
      watch.watch(stopped, { destroy: () => { sessionsEnded++; } }, 'stopped');
      watch.watch(slow, { destroy: () => { sessionsEnded++; } }, 'slow');
      const chunk = Buffer.alloc(1 << 20);
      const flood = (s: net.Socket) => { for (let i = 0; i < 32 && !s.destroyed; i++) s.write(chunk); };
      flood(stopped);
      flood(slow);
      const refill = setInterval(() => { if (slow.writableLength < 4 << 20) flood(slow); }, 100);
      try {
        await eventually('the stopped connection to be reset', () => stopped.destroyed, 10_000);
        assert.deepEqual(reasons, ['stalled']);
        assert.equal(sessionsEnded, 1);
        // Its queue was discarded with a reset, not left to the kernel to deliver: the peer, reading
        // again, finds ECONNRESET rather than the rest of the data and a FIN.
        let peerError: string | undefined;
        stoppedPeer.on('error', (err: NodeJS.ErrnoException) => { peerError = err.code; });
        stoppedPeer.resume();
        await eventually('the peer to see the reset', () => stoppedPeer.destroyed, 5_000);
        assert.equal(peerError, 'ECONNRESET');
        // The slow one is still open two stall timeouts later.
        await new Promise((r) => setTimeout(r, 2_000));
        assert.ok(!slow.destroyed, 'a connection read slowly was reset');
        assert.deepEqual(reasons, ['stalled']);
      } finally {
        clearInterval(drip);
        clearInterval(refill);
      }
    } finally {
      watch.close();
      for (const s of held) s.destroy();
      server.close();
    }
  });
});
