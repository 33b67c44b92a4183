"""aiokafka (asyncio client with its own protocol code) against a real node: a round trip, an
idempotent producer, and a group consumer resuming from its commits."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_round_trip_with_gzip_and_idempotence(shared_node):
    async def scenario():
        topic = "aio-rt"
        producer = AIOKafkaProducer(bootstrap_servers=shared_node.bootstrap, acks="all",
                                    compression_type="gzip", enable_idempotence=True)
        await producer.start()
        try:
            sent = [await producer.send_and_wait(topic, f"a{i}".encode(), partition=0)
                    for i in range(200)]
            batch = producer.create_batch()
            for i in range(200, 1200):
                batch.append(key=None, value=f"a{i}".encode(), timestamp=None)
            await (await producer.send_batch(batch, topic, partition=0))
        finally:
            await producer.stop()
        assert [m.offset for m in sent] == list(range(200))
        consumer = AIOKafkaConsumer(bootstrap_servers=shared_node.bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            got = []
            while len(got) < 1200:
                records = await consumer.getmany(tp, timeout_ms=5000)
                assert records, f"no records after {len(got)}"
                got.extend(m.value for m in records[tp])
        finally:
            await consumer.stop()
        assert got == [f"a{i}".encode() for i in range(1200)]

    run(scenario())


def test_group_consumer_resumes_from_commits(node):
    async def scenario():
        topic, group = "aio-group", "aio-g"
        producer = AIOKafkaProducer(bootstrap_servers=node.bootstrap, acks="all")
        await producer.start()
        try:
            for i in range(100):
                await producer.send(topic, f"{i}".encode(), partition=0)
            await producer.flush()
        finally:
            await producer.stop()

        async def consume(n: int) -> list[int]:
            c = AIOKafkaConsumer(topic, bootstrap_servers=node.bootstrap, group_id=group,
                                 enable_auto_commit=False, auto_offset_reset="earliest")
            await c.start()
            got: list[int] = []
            try:
                while len(got) < n:
                    batch = await c.getmany(timeout_ms=5000, max_records=n - len(got))
                    assert batch, f"nothing fetched after {len(got)} records"
                    for records in batch.values():
                        got.extend(int(m.value) for m in records)
                await c.commit()
            finally:
                await c.stop()
            return got

        first = await consume(60)
        second = await consume(40)
        assert first + second == list(range(100))

    run(scenario())
