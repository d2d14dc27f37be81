"""Many 1 MiB uploads, then downloads, against a running Conduit: what each
costs the server (CPU, page faults) and the client. Longer than mxbench's
media phase (20 files, ~40 ms), so a change to the media pipeline shows in
the per-operation figures. Not a test: it prints figures.

    python media_probe.py BASE_URL TOKEN SERVER_PID [COUNT]
"""

import asyncio
import hashlib
import os
import sys
import time

import aiohttp

CONCURRENCY = 4  # as mxbench's media scenario
SIZE = 1 << 20
WARM_UP = 8


def server_counters(pid: str) -> tuple[int, float]:
    """Minor page faults and CPU seconds of the server so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command name: minflt is the 8th field, utime and stime the 12th and 13th.
    return int(fields[7]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured(name: str, pid: str, count: int, run) -> None:
    faults0, cpu0 = server_counters(pid)
    client0, wall0 = time.process_time(), time.perf_counter()
    await run()
    wall = time.perf_counter() - wall0
    client = time.process_time() - client0
    faults1, cpu1 = server_counters(pid)
    print(
        f"{name}: {count * SIZE / wall / (1 << 20):.0f} MiB/s; per operation: "
        f"server CPU {(cpu1 - cpu0) / count * 1000:.2f} ms, server page faults {(faults1 - faults0) / count:.0f}, "
        f"client CPU {client / count * 1000:.2f} ms"
    )


async def pool(items, work) -> None:
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def main(base: str, token: str, pid: str, count: int) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    blobs = [os.urandom(SIZE) for _ in range(count + WARM_UP)]
    uris: dict[int, str] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2 * CONCURRENCY)) as session:

        async def upload(i: int) -> None:
            headers = dict(auth, **{"Content-Type": "application/octet-stream"})
            async with session.post(f"{base}/_matrix/media/v3/upload", data=blobs[i], headers=headers) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise SystemExit(f"upload {i}: {resp.status} {body}")
                uris[i] = body["content_uri"].removeprefix("mxc://")

        async def download(i: int) -> None:
            async with session.get(f"{base}/_matrix/client/v1/media/download/{uris[i]}", headers=auth) as resp:
                body = await resp.read()
            if resp.status != 200 or hashlib.sha256(body).digest() != hashlib.sha256(blobs[i]).digest():
                raise SystemExit(f"download {i}: {resp.status}, {len(body)} bytes, content differs")

        await pool(range(WARM_UP), upload)
        measured_ids = range(WARM_UP, WARM_UP + count)
        await measured("upload", pid, count, lambda: pool(measured_ids, upload))
        await measured("download", pid, count, lambda: pool(measured_ids, download))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 300))
