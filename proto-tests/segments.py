"""Reads what a node stored, straight from its segment files, so tests can check the bytes on
disk (for example that a batch was stored with the codec its producer used)."""

from __future__ import annotations

import struct

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def stored_codecs(node, topic: str, partition: int = 0) -> set[int]:
    """Compression codec ids of the batches on disk, from the segment files' batch headers
    (the 61-byte magic-2 header: batchLength at byte 8, attributes at byte 21)."""
    codecs = set()
    for segment in sorted((node.data_dir / f"{topic}-{partition}").glob("*.log")):
        data = segment.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            (length,) = struct.unpack_from(">i", data, pos + 8)
            (attributes,) = struct.unpack_from(">h", data, pos + 21)
            codecs.add(attributes & 7)
            pos += 12 + length
    return codecs
