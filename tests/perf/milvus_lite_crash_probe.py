"""Does a Milvus Lite server keep every acknowledged write when it dies mid-stream?

Starts ``milvus-lite server`` on a fresh folder, has ``--writers`` threads (each its own documents, as
the consumer writes each partition from its own task) upsert 0-3 chunks per document and delete the
chunks past that count, as the sink does, kills the server with ``--signal`` after ``--seconds``,
restarts it on the same folder and compares every document's chunk count with the last write that was
acknowledged (documents of a write that failed at the kill are left out: it may or may not have landed).

    python tests/perf/milvus_lite_crash_probe.py --writers 4 --signal SIGTERM

Exit 0 when every acknowledged write is there, 1 otherwise.  No part of the pipeline runs here.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from pymilvus import DataType, MilvusClient

DIM = 64


def start(folder: Path, port: int) -> tuple[subprocess.Popen[bytes], MilvusClient]:
    command = [str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir", str(folder)]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            client = MilvusClient(uri=f"http://127.0.0.1:{port}", timeout=2)
            client.list_collections()
            return server, client
        except Exception:
            time.sleep(0.2)
    raise SystemExit("milvus-lite server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--signal", default="SIGTERM", choices=("SIGTERM", "SIGKILL"))
    parser.add_argument("--port", type=int, default=29123)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="milvus-lite-probe-"))
    server, client = start(folder, args.port)
    schema = client.create_schema(auto_id=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
    schema.add_field("chunk_index", DataType.INT64)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index("v", index_type="FLAT", metric_type="COSINE")
    client.create_collection("probe", schema=schema, index_params=index, consistency_level="Strong")
    acknowledged: dict[str, int] = {}
    unsure: set[str] = set()
    stop = threading.Event()

    def write(writer: int) -> None:
        rng = random.Random(args.seed * 1000 + writer)
        while not stop.is_set():
            docs = rng.sample([f"w{writer}d{k}" for k in range(80)], 16)
            counts = {doc: rng.randint(0, 3) for doc in docs}
            rows = [
                {"pk": f"{doc}#{i}", "doc_id": doc, "chunk_index": i, "v": [rng.random() for _ in range(DIM)]}
                for doc in docs
                for i in range(counts[doc])
            ]
            try:
                if rows:
                    client.upsert("probe", rows)
                for n in range(4):
                    group = [doc for doc in docs if counts[doc] == n]
                    if group:
                        names = ", ".join(f'"{doc}"' for doc in group)
                        client.delete("probe", filter=f"doc_id in [{names}] and chunk_index >= {n}")
                acknowledged.update(counts)
            except Exception:
                unsure.update(docs)
                return

    threads = [threading.Thread(target=write, args=(k,)) for k in range(args.writers)]
    for thread in threads:
        thread.start()
    time.sleep(args.seconds)
    os.killpg(server.pid, getattr(signal, args.signal))
    server.wait(30)
    stop.set()
    for thread in threads:
        thread.join(30)
    server, client = start(folder, args.port)
    try:
        client.load_collection("probe")
        rows = client.query("probe", filter="chunk_index >= 0", output_fields=["doc_id"], limit=16000)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    seen = Counter(row["doc_id"] for row in rows)
    checked = {doc: n for doc, n in acknowledged.items() if doc not in unsure}
    wrong = {doc: (n, seen.get(doc, 0)) for doc, n in checked.items() if seen.get(doc, 0) != n}
    print(
        f"{args.writers} writer(s), {args.signal} after {args.seconds:.0f} s: {len(checked)} documents "
        f"acknowledged and checked, {len(wrong)} differ after the restart "
        f"(document: (acknowledged chunks, chunks found)) {list(wrong.items())[:5]}"
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
