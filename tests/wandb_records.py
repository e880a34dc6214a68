"""Read an offline W&B run file (``run-*.wandb``) to check what was logged, without a server.

The file is a LevelDB-style log of protobuf ``Record`` messages: a 7-byte header, then 32 KiB blocks
of chunks, each with a 7-byte chunk header (crc32, little-endian length, type FULL/FIRST/MIDDLE/LAST).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    """All records of a .wandb file."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, records, pending = 7, [], b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        record = pb.Record()
        record.ParseFromString(pending)
        records.append(record)
    return records


def _numbers(path: Path, kind: str):
    """(key, number) pairs of the ``history`` or ``summary`` records, in order."""
    for record in read_records(path):
        if record.WhichOneof("record_type") != kind:
            continue
        items = record.history.item if kind == "history" else record.summary.update
        for item in items:
            try:
                value = json.loads(item.value_json)
            except json.JSONDecodeError:
                continue
            if isinstance(value, int | float):
                yield item.key or "/".join(item.nested_key), float(value)


def logged_history(path: Path) -> dict[str, list[float]]:
    """metric key -> logged values, from the history records."""
    out: dict[str, list[float]] = {}
    for key, value in _numbers(path, "history"):
        out.setdefault(key, []).append(value)
    return out


def logged_summary(path: Path) -> dict[str, float]:
    """metric key -> last value, from the summary records (numbers only)."""
    return dict(_numbers(path, "summary"))
