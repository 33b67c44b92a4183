"""Reads what a node stored, straight from its segment files, so tests can check the bytes on
disk (for example that a batch was stored with the codec its producer used)."""

from __future__ import annotations

import struct

CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

# librdkafka sends a batch uncompressed when compressing it would not make it smaller, which
# happens to a batch of a few short records (a producer's last, or one cut by linger.ms). A
# batch with more records than this that is stored uncompressed means the codec was lost.
SMALL_BATCH_RECORDS = 8


def stored_batches(node, topic: str, partition: int = 0) -> list[tuple[int, int]]:
    """(codec id, record count) of every batch on disk, from the segment files' batch headers
    (the 61-byte magic-2 header: batchLength at byte 8, attributes at 21, recordsCount at 57)."""
    batches = []
    for segment in sorted((node.data_dir / f"{topic}-{partition}").glob("*.log")):
        data = segment.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            (length,) = struct.unpack_from(">i", data, pos + 8)
            (attributes,) = struct.unpack_from(">h", data, pos + 21)
            (records,) = struct.unpack_from(">i", data, pos + 57)
            batches.append((attributes & 7, records))
            pos += 12 + length
    return batches


def stored_codecs(node, topic: str, partition: int = 0) -> set[int]:
    """Compression codec ids of the batches on disk."""
    return {codec for codec, _ in stored_batches(node, topic, partition)}


def assert_stored_by_librdkafka(node, topic: str, codec: str, partition: int = 0) -> None:
    """Every batch a librdkafka producer sent with `codec` is stored with it, except small
    batches librdkafka chose to send uncompressed (see SMALL_BATCH_RECORDS)."""
    batches = stored_batches(node, topic, partition)
    wanted = CODEC_IDS[codec]
    assert any(c == wanted for c, _ in batches), f"no batch stored with {codec}: {batches[:5]}"
    wrong = [(c, n) for c, n in batches
             if c != wanted and not (c == 0 and n <= SMALL_BATCH_RECORDS)]
    assert not wrong, f"batches stored with another codec than {codec}: {wrong[:5]}"


def stored_batch_headers(node, topic: str, partition: int = 0) -> list[tuple[int, int, int, int]]:
    """(base offset, last offset delta, partition leader epoch, CRC) of every batch in the
    partition's segment files, in file order: what replicas of a partition must agree on
    (their logs are the same batches at the same offsets). Stops at a header that is not a
    magic-2 batch (a torn tail or unwritten space)."""
    out = []
    for segment in sorted((node.data_dir / f"{topic}-{partition}").glob("*.log")):
        data = segment.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            base, length, epoch, magic, crc = struct.unpack_from(">qiibI", data, pos)
            if length < 49 or magic != 2 or pos + 12 + length > len(data):
                break
            (last_delta,) = struct.unpack_from(">i", data, pos + 23)
            out.append((base, last_delta, epoch, crc))
            pos += 12 + length
    return out


def newest_segment_extent(node, topic: str, partition: int = 0) -> tuple[str, int, int]:
    """(file name, where its whole batches end, file size) of the partition's newest segment.
    A file longer than its batches by less than a 4 KiB block, ending on a block boundary, is
    a follower's direct write: it pads its last block with zeros (cut again on seal, close or
    recovery)."""
    segment = sorted((node.data_dir / f"{topic}-{partition}").glob("*.log"))[-1]
    data = segment.read_bytes()
    pos = 0
    while pos + 61 <= len(data):
        length, magic = struct.unpack_from(">i", data, pos + 8)[0], data[pos + 16]
        if length < 49 or magic != 2 or pos + 12 + length > len(data):
            break
        pos += 12 + length
    return segment.name, pos, len(data)
