#!/usr/bin/env python3
"""A TCP proxy that delays what it passes on: a slow link where `tc netem` is not available
(cluster/chaos/slow_link.sh).

    delay_proxy.py --listen HOST:PORT --to HOST:PORT --delay-ms 50 [--stats FILE]
                   [--max-seconds 600]

Every chunk read on one side is written to the other DELAY ms after it was read, in order, in
both directions: the link's latency grows by DELAY each way while its throughput stays what it
was (chunks are not held back by the ones before them beyond their own deadline). The delay is
off at start; SIGUSR1 turns it on, SIGUSR2 off again (new chunks only), so a scenario can make a
link slow and heal it without breaking the connections that use it. SIGTERM/SIGINT, or
--max-seconds, stops the proxy; on the way out it writes JSON figures to --stats (connections
accepted, bytes each way, chunks delayed) when given.
"""
import argparse
import asyncio
import json
import signal
import sys
import time


def address(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


class Proxy:
    def __init__(self, target, delay_s):
        self.target = target
        self.delay_s = delay_s
        self.slow = False
        self.stats = {"connections": 0, "failed_connects": 0, "bytes_to_target": 0,
                      "bytes_from_target": 0, "chunks_delayed": 0, "delay_ms": delay_s * 1000}

    async def pump(self, reader, writer, counter):
        """Reads chunks and hands them to a writer task that sends each at its own deadline."""
        queue = asyncio.Queue()

        async def send():
            while True:
                item = await queue.get()
                if item is None:
                    break
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # the link's latency, not synchronisation
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                self.stats[counter] += len(data)
                due = time.monotonic()
                if self.slow:
                    due += self.delay_s
                    self.stats["chunks_delayed"] += 1
                queue.put_nowait((due, data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
        try:
            await sender
        except (ConnectionError, OSError):
            pass

    async def handle(self, client_reader, client_writer):
        try:
            target_reader, target_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=2)
        except (OSError, asyncio.TimeoutError):
            self.stats["failed_connects"] += 1
            client_writer.close()
            return
        self.stats["connections"] += 1
        await asyncio.gather(
            self.pump(client_reader, target_writer, "bytes_to_target"),
            self.pump(target_reader, client_writer, "bytes_from_target"))


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=address, required=True)
    p.add_argument("--to", type=address, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--stats")
    p.add_argument("--max-seconds", type=float, default=600)
    a = p.parse_args()
    if not 0 <= a.delay_ms <= 60_000:
        p.error("--delay-ms must be between 0 and 60000")
    proxy = Proxy(a.to, a.delay_ms / 1000)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(proxy, "slow", True))
    loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(proxy, "slow", False))
    try:
        server = await asyncio.start_server(proxy.handle, *a.listen, reuse_address=True)
    except OSError as e:
        print(f"delay_proxy: cannot listen on {a.listen[0]}:{a.listen[1]}: {e}", file=sys.stderr)
        return 1
    print(f"delay_proxy: {a.listen[0]}:{a.listen[1]} -> {a.to[0]}:{a.to[1]}, "
          f"{a.delay_ms:g} ms each way when slow", file=sys.stderr, flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=a.max_seconds)
    except asyncio.TimeoutError:
        pass
    server.close()
    if a.stats:
        with open(a.stats, "w") as f:
            json.dump(proxy.stats, f)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
