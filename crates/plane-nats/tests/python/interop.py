"""A plain NATS client (nats-py, not plane) talking to plane over NATS.

Driven by crates/plane-nats/tests/python.rs: prints one line per step and
waits for a line on stdin before closing.
"""
import asyncio
import sys

import nats


async def main(url: str) -> None:
    nc = await nats.connect(url)

    # Call a plane endpoint: a plain request gets the unary reply body.
    reply = await nc.request("plane.req.echo", b"from-python", timeout=5)
    print("reply", reply.data.decode(), flush=True)

    # Serve an endpoint that a plane caller uses.
    async def upper(msg):
        await msg.respond(msg.data.upper())

    await nc.subscribe("plane.req.pyupper", queue="plane.pyupper", cb=upper)

    # Receive plane events.
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    async def on_event(msg):
        if not got.done():
            got.set_result(msg)

    await nc.subscribe("fromplane.>", cb=on_event)
    await nc.flush()
    print("ready", flush=True)
    msg = await asyncio.wait_for(got, 10)
    seq = (msg.headers or {}).get("plane-seq", "-")
    print("event", msg.subject, msg.data.decode(), seq, flush=True)

    # Publish an event a plane subscriber receives.
    await nc.publish("frompython.x", b"py-event")
    await nc.flush()

    await loop.run_in_executor(None, sys.stdin.readline)
    await nc.close()


asyncio.run(main(sys.argv[1]))
