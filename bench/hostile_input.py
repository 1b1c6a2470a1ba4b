"""Hostile input: what zip bombs, an endless upload and a huge JSON body cost the API process.

Starts the real API (`trainyard api`, in a subprocess on a free port, on a fresh data
directory with the embedded SQLite database, TRAINYARD_MAX_DATASET_BYTES=--limit-mib MiB),
creates a user with `trainyard user add`, and measures from the outside:

1. zip bombs posted to POST /datasets, each an .npz-shaped zip (x_train, y_train, x_test,
   y_test) whose x_train is a valid .npy header followed by ~2.2 GB of zeros: bzip2 (x_train
   1.7 KB packed, the archive 2.3 KB), bzip2 in an entry named plain `x_train` (np.load
   reads that too), deflate (about 2 MB), deflate declaring 4 KiB unpacked while it inflates
   to 2.2 GB (the lie is made by writing the zip headers by hand; zipfile writes only true
   sizes); then --parallel of them at once. Each must be refused (413 or 422), and the API
   process's resident memory must grow by less than 100 MB: its peak (the kernel's
   high-water mark VmHWM, reset before the bombs, and VmRSS sampled every 5 ms) against its
   VmRSS before, all read from /proc/PID/status.
2. a --stream-mib MiB upload, chunked (no Content-Length), generated as it is sent: the
   status, how many body bytes the client had handed to its socket when the answer came (an
   upper bound on what the server read: loopback socket buffers hold a few MiB more), and
   that no file is left in the data directory's datasets/uploads nor in the API's TMPDIR
   (nor a descriptor held open by the API process).
3. a --json-mb MB JSON body to POST /jobs, with Content-Length and chunked, --repeat times
   each: status and latency to the answer, while another client polls GET /jobs in a loop:
   that client's p99 and max latency while the big bodies are being sent, and before them.

Prints one JSON line with every figure, the targets and whether each is met.

    python bench/hostile_input.py
    python bench/hostile_input.py --parallel 32 --repeat 10
    python bench/hostile_input.py --stream-mib 2048 --limit-mib 256

Linux only (/proc). Needs nothing but the project's virtualenv.
"""

from __future__ import annotations

import argparse
import bz2
import io
import math
import os
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # api_scale beside it
import api_scale as scale

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
REFUSED = (413, 422)
FORM_OVERHEAD_BYTES = 64 * 1024  # what the API allows around the file (app/api/body_limit.py)


# ---------------------------------------------------------------- the bombs


@dataclass
class Entry:
    name: str
    method: int  # zipfile.ZIP_STORED (0), ZIP_DEFLATED (8), ZIP_BZIP2 (12)
    data: bytes  # as stored in the archive (compressed)
    crc: int
    size: int  # the unpacked size the headers declare


def zip_bytes(entries: list[Entry]) -> bytes:
    """A zip archive with exactly these headers: local file headers, central directory,
    end record (no zip64: every size here is below 4 GiB)."""
    out = bytearray()
    central = bytearray()
    for entry in entries:
        name = entry.name.encode()
        version = 46 if entry.method == 12 else 20
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            version,
            0,
            entry.method,
            0,
            0x21,  # 1980-01-01
            entry.crc,
            len(entry.data),
            entry.size,
            len(name),
            0,
        )
        out += name + entry.data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            version,
            version,
            0,
            entry.method,
            0,
            0x21,
            entry.crc,
            len(entry.data),
            entry.size,
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += name
    start = len(out)
    out += central
    out += struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), start, 0
    )
    return bytes(out)


def npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def deflated(name: str, array: np.ndarray) -> Entry:
    """A small entry, deflated as np.savez_compressed does."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = compressor.compress(data) + compressor.flush()
    return Entry(name, 8, packed, zlib.crc32(data), len(data))


@dataclass
class Payload:
    """x_train's bytes, compressed as a stream: an .npy header, then zeros."""

    method: int
    data: bytes
    crc: int  # of all `size` bytes
    size: int
    head_crc: int  # of the first HEAD bytes
    seconds: float


HEAD = 4096


def compress_payload(method: int, unpacked: int) -> Payload:
    """Compress an .npy of uint8 images of ~`unpacked` bytes of zeros, 16 MiB at a time
    (never held whole)."""
    started = time.perf_counter()
    images = unpacked // (32 * 32 * 3)
    header = npy_header((images, 32, 32, 3))
    size = len(header) + images * 32 * 32 * 3
    if method == 12:
        compressor: Any = bz2.BZ2Compressor(9)
    else:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zip stores it
    parts = [compressor.compress(header)]
    crc = zlib.crc32(header)
    head_crc = zlib.crc32((header + bytes(HEAD))[:HEAD])
    zeros = bytes(16 * MIB)
    left = size - len(header)
    while left:
        chunk = zeros if left >= len(zeros) else zeros[:left]
        parts.append(compressor.compress(chunk))
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    parts.append(compressor.flush())
    data = b"".join(parts)
    return Payload(method, data, crc, size, head_crc, time.perf_counter() - started)


def bombs(unpacked: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    """name -> archive bytes, and how they were made."""
    with ThreadPoolExecutor(2) as pool:  # bz2 and zlib release the GIL
        bzip2_job = pool.submit(compress_payload, 12, unpacked)
        deflate_job = pool.submit(compress_payload, 8, unpacked)
        bzip2, deflate = bzip2_job.result(), deflate_job.result()
    rest = [
        deflated("y_train.npy", np.arange(40, dtype=np.int64) % 2),
        deflated("x_test.npy", np.zeros((8, 32, 32, 3), np.uint8)),
        deflated("y_test.npy", np.arange(8, dtype=np.int64) % 2),
    ]

    def archive(name: str, payload: Payload, declared: int | None = None) -> bytes:
        crc = payload.crc if declared is None else payload.head_crc
        x = Entry(name, payload.method, payload.data, crc, declared or payload.size)
        return zip_bytes([x, *rest])

    made = {
        "bzip2": archive("x_train.npy", bzip2),
        "bzip2_plain_name": archive("x_train", bzip2),
        "deflate": archive("x_train.npy", deflate),
        # Declares HEAD bytes (whose CRC it carries), inflates to 2.2 GB.
        "deflate_lying_size": archive("x_train.npy", deflate, declared=HEAD),
    }
    info = {
        "unpacked_bytes": bzip2.size,
        "archive_bytes": {name: len(data) for name, data in made.items()},
        "build_s": {"bzip2": round(bzip2.seconds, 1), "deflate": round(deflate.seconds, 1)},
    }
    return made, info


# ---------------------------------------------------------------- the API process


@dataclass
class Api:
    base: str
    port: int
    pid: int
    token: str
    data_dir: Path
    tmp_dir: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _env(data_dir: Path, tmp_dir: Path, limit: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(
        TRAINYARD_DATA_DIR=str(data_dir),
        TRAINYARD_DATABASE_URL="",  # the embedded SQLite file under the data directory
        TRAINYARD_BROKER_URL="",
        TRAINYARD_MAX_DATASET_BYTES=str(limit),
        TMPDIR=str(tmp_dir),  # where the multipart parser spools an upload
    )
    return env


@contextmanager
def api_server(workdir: Path, limit: int) -> Iterator[Api]:
    """`trainyard api` in a subprocess on a free port (as bench/api_scale.py starts it), on
    the embedded SQLite database, and a user's token."""
    data_dir, tmp_dir = workdir / "data", workdir / "api-tmp"
    tmp_dir.mkdir()
    env = _env(data_dir, tmp_dir, limit)
    me = [sys.executable, "-m", "app.cli"]
    token = subprocess.run(
        [*me, "user", "add", "bench"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    extra = {k: env[k] for k in ("TRAINYARD_BROKER_URL", "TRAINYARD_MAX_DATASET_BYTES", "TMPDIR")}
    with scale.api_server("", data_dir, True, workdir / "api.log", extra) as server:
        port = int(server.base.rsplit(":", 1)[1])
        yield Api(server.base, port, server.pid, token, data_dir, tmp_dir)


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) of `pid`, in kB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def reset_peak(pid: int) -> bool:
    """Reset `pid`'s VmHWM to its current VmRSS (Linux >= 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssSampler:
    """Samples VmRSS of `pid` every `interval` seconds in a thread; `peak_kb` is the most."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid, self.interval = pid, interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, memory_kb(self.pid)["VmRSS"])
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Poller:
    """GET /jobs in a loop, one at a time, in a thread: (start, milliseconds, status) each."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.api.base, headers=self.api.auth, timeout=30) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                status = client.get("/jobs").status_code
                self.samples.append((start, (time.perf_counter() - start) * 1000, status))
                time.sleep(0.005)

    def during(self, begin: float, end: float) -> list[float]:
        """Latencies of the requests that were under way at some point in [begin, end]."""
        return [ms for start, ms, _ in self.samples if start <= end and start + ms / 1000 >= begin]

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def summary(samples: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles, in milliseconds."""
    ordered = sorted(samples) or [math.nan]

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)

    return {"p50": rank(0.5), "p99": rank(0.99), "max": rank(1.0), "n": len(samples)}


# ---------------------------------------------------------------- raw HTTP


@dataclass
class Sent:
    status: int  # 0: no answer
    body_bytes_sent: int  # body bytes (with chunk framing) the client's socket took first
    seconds: float  # from the first byte sent to the answer's status line
    complete: bool  # the whole body was sent
    error: str


def _wire(body: Iterator[bytes], chunked: bool) -> Iterator[bytes]:
    for piece in body:
        yield b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    if chunked:
        yield b"0\r\n\r\n"


def send_streamed(
    api: Api, path: str, content_type: str, body: Iterator[bytes], length: int | None
) -> Sent:
    """POST `body` (generated as it is sent) over a raw socket, with Content-Length
    `length` or, without, chunked; stop sending as soon as an answer can be read."""
    head = "\r\n".join(
        [
            f"POST {path} HTTP/1.1",
            f"Host: 127.0.0.1:{api.port}",
            f"Authorization: Bearer {api.token}",
            f"Content-Type: {content_type}",
            f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
            "",
            "",
        ]
    ).encode()
    sock = socket.create_connection(("127.0.0.1", api.port))
    sock.setblocking(False)
    sent, complete, error = 0, False, ""
    started = time.perf_counter()
    pieces = _wire(body, chunked=length is None)
    pending = memoryview(head)
    try:
        while True:
            if not pending:
                piece = next(pieces, None)
                if piece is None:
                    complete = True
                    break
                pending = memoryview(piece)
            readable, writable, _ = select.select([sock], [sock], [], 30)
            if readable:
                break  # the answer (or the server closing)
            if not writable:
                error = "stalled: the server neither read nor answered for 30 s"
                break
            written = sock.send(pending)
            sent += written
            pending = pending[written:]
    except OSError as exc:  # the server closed the connection while the client sent
        error = f"{type(exc).__name__}: {exc}"
    sock.setblocking(True)
    sock.settimeout(30)
    answer = b""
    try:
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except OSError as exc:
        error = error or f"reading the answer: {type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    sock.close()
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    status = int(match.group(1)) if match else 0
    return Sent(status, max(0, sent - len(head)), seconds, complete, error)


def filler_stream(
    total: int, prefix: bytes, suffix: bytes, fill: bytes = b"\0", chunk: int = 256 * 1024
) -> Iterator[bytes]:
    """prefix, `total` fill bytes, suffix: made as they are sent, never held whole."""
    yield prefix
    block = fill * chunk
    left = total
    while left > 0:
        yield block if left >= chunk else block[:left]
        left -= chunk
    yield suffix


# ---------------------------------------------------------------- the measurements


def post_file(api: Api, content: bytes) -> tuple[int, str]:
    """The status of POST /datasets with `content`, and the start of its answer."""
    with httpx.Client(base_url=api.base, headers=api.auth, timeout=120) as client:
        files = {"file": ("bomb.npz", content, "application/octet-stream")}
        response = client.post("/datasets", files=files)
        return response.status_code, response.text[:200]


def small_dataset() -> bytes:
    buffer = io.BytesIO()
    labels = np.arange(40) % 4
    np.savez(
        buffer,
        x_train=np.zeros((40, 32, 32, 3), np.uint8),
        y_train=labels,
        x_test=np.zeros((8, 32, 32, 3), np.uint8),
        y_test=labels[:8],
    )
    return buffer.getvalue()


def warm_up(api: Api) -> None:
    """What any upload and listing loads (numpy, the multipart parser, the routes) is
    counted before the bombs, not as their cost."""
    status, answer = post_file(api, small_dataset())
    assert status == 201, answer
    with httpx.Client(base_url=api.base, headers=api.auth) as client:
        for _ in range(20):
            client.get("/jobs")
            client.get("/datasets")
    time.sleep(0.5)


def files_in(api: Api) -> set[str]:
    """What is in the data directory's datasets/uploads folder and in the API's TMPDIR."""
    folders = (api.data_dir / "datasets" / "uploads", api.tmp_dir)
    return {str(path) for folder in folders for path in folder.iterdir()}


def measure_bombs(api: Api, made: dict[str, bytes], parallel: int) -> dict[str, Any]:
    before = memory_kb(api.pid)["VmRSS"]
    peak_reset = reset_peak(api.pid)
    one_by_one: dict[str, tuple[int, str]] = {}
    with RssSampler(api.pid) as sampler:
        for name, content in made.items():
            one_by_one[name] = post_file(api, content)
        names = [list(made)[i % len(made)] for i in range(parallel)]
        with ThreadPoolExecutor(parallel) as pool:
            answers = list(pool.map(lambda n: post_file(api, made[n]), names))
    after = memory_kb(api.pid)
    peak = max(sampler.peak_kb, after["VmHWM"] if peak_reset else 0)
    statuses = {name: status for name, (status, _) in one_by_one.items()}
    together = [status for status, _ in answers]
    counts: dict[str, dict[str, int]] = {}
    for name, status in zip(names, together, strict=True):
        counts.setdefault(name, {})
        counts[name][str(status)] = counts[name].get(str(status), 0) + 1
    unexpected = {
        text for status, text in [*one_by_one.values(), *answers] if status not in REFUSED
    }
    return {
        "status": statuses,
        "parallel": parallel,
        "parallel_status_counts": counts,
        "rss_before_mb": round(before / 1024, 1),
        "rss_peak_mb": round(peak / 1024, 1),
        "rss_after_mb": round(after["VmRSS"] / 1024, 1),
        "rss_growth_mb": round((peak - before) / 1024, 1),
        "peak_from": "VmHWM reset before, and VmRSS sampled" if peak_reset else "VmRSS sampled",
        "all_refused": all(s in REFUSED for s in [*statuses.values(), *together]),
        "other_answers": sorted(unexpected),
    }


def measure_stream(api: Api, stream_bytes: int, limit: int, poller: Poller) -> dict[str, Any]:
    boundary = "hostileinputbench"
    prefix = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="big.npz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    suffix = f"\r\n--{boundary}--\r\n".encode()
    files_before = open_files(api.pid)
    before_files = files_in(api)
    before = memory_kb(api.pid)["VmRSS"]
    with RssSampler(api.pid) as sampler:
        begin = time.perf_counter()
        sent = send_streamed(
            api,
            "/datasets",
            f"multipart/form-data; boundary={boundary}",
            filler_stream(stream_bytes, prefix, suffix),
            None,
        )
        end = time.perf_counter()
    time.sleep(1.0)  # let the server finish whatever follows its answer
    return {
        "status": sent.status,
        "stream_mib": stream_bytes // MIB,
        "limit_mib": limit / MIB,
        "body_mib_sent_before_answer": round(sent.body_bytes_sent / MIB, 1),
        "seconds": round(sent.seconds, 2),
        "whole_body_sent": sent.complete,
        "client_error": sent.error,
        "files_left": sorted(files_in(api) - before_files),
        "open_files_before": files_before,
        "open_files_after": open_files(api.pid),
        "rss_growth_mb": round((sampler.peak_kb - before) / 1024, 1),
        "poll_ms_during": summary(poller.during(begin, end)),
    }


def measure_json(api: Api, megabytes: int, repeat: int, poller: Poller) -> dict[str, Any]:
    prefix = b'{"dataset": "digits", "epochs": 1, "gpus": 0, "name": "'
    suffix = b'"}'
    filler = megabytes * 1000 * 1000 - len(prefix) - len(suffix)
    results: dict[str, Any] = {}
    windows: list[tuple[float, float]] = []
    for mode in ("content_length", "chunked"):
        runs = []
        for _ in range(repeat):
            # A valid JSON document: were it read, it would be parsed and validated whole.
            body = filler_stream(filler, prefix, suffix, fill=b"a")
            length = megabytes * 1000 * 1000 if mode == "content_length" else None
            begin = time.perf_counter()
            sent = send_streamed(api, "/jobs", "application/json", body, length)
            windows.append((begin, time.perf_counter()))
            runs.append(sent)
            time.sleep(0.2)
        results[mode] = {
            "status": sorted({r.status for r in runs}),
            "latency_ms": summary([r.seconds * 1000 for r in runs]),
            "body_mib_sent_before_answer_max": round(max(r.body_bytes_sent for r in runs) / MIB, 2),
            "client_errors": sorted({r.error for r in runs if r.error}),
        }
    during = [ms for begin, end in windows for ms in poller.during(begin, end)]
    results["poll_ms_during"] = summary(during)
    return results


TARGETS = {  # figure -> (test, target as shown)
    "bombs.all_refused": (lambda v: v is True, "every bomb 413 or 422"),
    "bombs.rss_growth_mb": (lambda v: v < 100, "< 100"),
    "stream.status": (lambda v: v == 413, "413"),
    "stream.files_left_count": (lambda v: v == 0, "0"),
    "json.content_length.status": (lambda v: v == [413], "413"),
    "json.content_length.latency_ms.max": (lambda v: v < 1000, "< 1000"),
    "json.chunked.status": (lambda v: v == [413], "413"),
    "json.chunked.latency_ms.max": (lambda v: v < 1000, "< 1000"),
    "json.poll_ms_during.p99": (lambda v: v <= 200, "<= 200"),
    "json.poll_ms_during.max": (lambda v: v <= 200, "<= 200"),
}


def judged(results: dict[str, Any]) -> list[dict[str, Any]]:
    verdicts = []
    for figure, (test, target) in TARGETS.items():
        value: Any = results
        for part in figure.split("."):
            value = value[part]
        verdicts.append({"figure": figure, "value": value, "target": target, "met": test(value)})
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mib", type=int, default=64, help="TRAINYARD_MAX_DATASET_BYTES")
    parser.add_argument("--unpacked-gb", type=float, default=2.2, help="what each bomb unpacks to")
    parser.add_argument("--parallel", type=int, default=16, help="bombs sent at once")
    parser.add_argument("--stream-mib", type=int, default=512, help="size of the endless upload")
    parser.add_argument("--json-mb", type=int, default=50, help="size of the JSON body")
    parser.add_argument("--repeat", type=int, default=5, help="JSON bodies of each kind")
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    limit = args.limit_mib * MIB
    made, made_info = bombs(int(args.unpacked_gb * 1e9))
    workdir = Path(tempfile.mkdtemp(prefix="trainyard-hostile-"))
    try:
        with api_server(workdir, limit) as api:
            warm_up(api)
            with Poller(api) as poller:
                time.sleep(2.0)
                idle = summary([ms for _, ms, _ in poller.samples])
                bomb_results = measure_bombs(api, made, args.parallel)
                stream = measure_stream(api, args.stream_mib * MIB, limit, poller)
                big_json = measure_json(api, args.json_mb, args.repeat, poller)
            poll_statuses = sorted({status for _, _, status in poller.samples})
            rss_end = memory_kb(api.pid)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    stream["files_left_count"] = len(stream["files_left"])
    results = {
        "bombs": bomb_results | {"made": made_info},
        "stream": stream,
        "json": big_json,
        "poll_ms_idle": idle,
        "poll_statuses": poll_statuses,
        "rss_end_mb": round(rss_end["VmRSS"] / 1024, 1),
    }
    verdicts = judged(results)
    scale.print_report("hostile_input", results, verdicts, limit_mib=args.limit_mib)


if __name__ == "__main__":
    main()
