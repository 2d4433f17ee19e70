"""Child process for test_store_durability: write documents until killed.

Usage: python _store_writer.py STORE_URL

For i = 0, 1, 2, ...: create document ``doc-i`` (expected_version=0), then advance
the ``counter`` document to version i+1 with a compare-and-set, and only then print
``ack <i>`` on stdout and flush. A printed acknowledgement therefore means both
writes have returned from ``put``; the parent kills this process with SIGKILL at
an arbitrary moment and checks that everything acknowledged is in the store.
"""

from __future__ import annotations

import sys
from typing import Any

from store import open_store


def document(i: int) -> dict[str, Any]:
    """The deterministic content of document i (the parent checks it byte for byte)."""
    return {
        "_id": f"doc-{i:06d}",
        "seq": i,
        "payload": {"text": f"entry {i} ✓", "squares": [i * i, (i + 1) * (i + 1)]},
        "odd": i % 2 == 1,
    }


def main() -> None:
    """Write until killed (or until a safety limit, so a lost parent cannot fill a disk)."""
    store = open_store(sys.argv[1])
    store.put("state", {"_id": "counter", "last": -1}, expected_version=0)
    for i in range(1_000_000):
        store.put("docs", document(i), expected_version=0)
        store.put("state", {"_id": "counter", "last": i}, expected_version=i + 1)
        sys.stdout.write(f"ack {i}\n")
        sys.stdout.flush()
    store.close()


if __name__ == "__main__":
    main()
