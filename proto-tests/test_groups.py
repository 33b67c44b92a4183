"""Consumer groups with real clients: members sharing partitions under each assignor, members
leaving and crashing, committed offsets surviving restarts, static membership, and the admin
API on groups."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from sluicenode import wait_until

pytestmark = pytest.mark.sluice_overrides({
    "group.initial.rebalance.delay.ms": "300",
    "group.min.session.timeout.ms": "1000",
    "offsets.topic.num.partitions": "8",
})


def make_topic(node, name: str, partitions: int) -> None:
    a = AdminClient({"bootstrap.servers": node.bootstrap})
    a.create_topics([NewTopic(name, partitions, 1)])[name].result(30)


def produce(node, topic: str, n: int, partitions: int, start: int = 0) -> None:
    """Messages with values start..start+n, message v to partition v % partitions."""
    p = Producer({"bootstrap.servers": node.bootstrap, "linger.ms": 5, "acks": "all"})
    for i in range(start, start + n):
        p.produce(topic, value=f"{i}".encode(), partition=i % partitions)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


class Member:
    """One confluent-kafka group member, polled by the test thread."""

    def __init__(self, node, group: str, topic: str, assignor: str, **conf) -> None:
        base = {"bootstrap.servers": node.bootstrap, "group.id": group,
                "partition.assignment.strategy": assignor, "auto.offset.reset": "earliest",
                "enable.auto.commit": False, "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500}
        base.update(conf)
        self.consumer = Consumer(base)
        self.assignment: set[int] = set()
        self.rebalances = 0
        self.seen: list[int] = []
        self.cooperative = assignor == "cooperative-sticky"
        self.consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked)

    def _assigned(self, consumer, partitions):
        self.rebalances += 1
        if self.cooperative:
            self.assignment |= {p.partition for p in partitions}
        else:
            self.assignment = {p.partition for p in partitions}

    def _revoked(self, consumer, partitions):
        self.rebalances += 1
        # Commit what was consumed before handing the partitions over (at-least-once).
        try:
            consumer.commit(asynchronous=False)
        except Exception:  # noqa: BLE001 - nothing consumed yet: nothing to commit
            pass
        if self.cooperative:
            self.assignment -= {p.partition for p in partitions}
        else:
            self.assignment = set()

    def poll(self, timeout: float = 0.1) -> None:
        # Take what is ready in one call: polling members one message at a time, round robin,
        # would make an idle member's timeout the pace of the whole group.
        for m in self.consumer.consume(num_messages=1000, timeout=timeout):
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(m.error())
                continue
            self.seen.append(int(m.value()))
            if len(self.seen) % 200 == 0:
                self.consumer.commit(asynchronous=True)

    def close(self) -> None:
        self.consumer.close()


def poll_all(members, until, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for m in members:
            m.poll(0.05)


def assert_partitions_owned_once(members, partitions: int) -> None:
    owners: dict[int, int] = {}
    for i, m in enumerate(members):
        for p in m.assignment:
            assert p not in owners, f"partition {p} owned by members {owners[p]} and {i}"
            owners[p] = i
    assert set(owners) == set(range(partitions)), f"unowned partitions: {set(range(partitions)) - set(owners)}"


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_members_share_a_topic_and_take_over_from_one_that_leaves(node, assignor):
    topic, group, parts, n = f"grp-{assignor}", f"g-{assignor}", 8, 8000
    make_topic(node, topic, parts)
    produce(node, topic, n, parts)
    members = [Member(node, group, topic, assignor) for _ in range(3)]
    try:
        poll_all(members, lambda: all(m.assignment for m in members)
                 and sum(len(m.assignment) for m in members) == parts, 60, "3 members to share 8 partitions")
        assert_partitions_owned_once(members, parts)
        poll_all(members, lambda: len({v for m in members for v in m.seen}) >= n, 60, "every message")
        everything = {v for m in members for v in m.seen}
        assert everything == set(range(n)), "a message was lost"

        a = AdminClient({"bootstrap.servers": node.bootstrap})
        [desc] = a.describe_consumer_groups([group]).values()
        d = desc.result(10)
        assert d.state == ConsumerGroupState.STABLE
        assert len(d.members) == 3
        assert sorted(p.partition for mem in d.members for p in mem.assignment.topic_partitions) == list(range(parts))

        # One member leaves (LeaveGroup); the other two take its partitions.
        leaving = members.pop()
        leaving.close()
        poll_all(members, lambda: sum(len(m.assignment) for m in members) == parts, 60,
                 "the remaining members to take over")
        assert_partitions_owned_once(members, parts)
        produce(node, topic, 800, parts, start=n)
        poll_all(members, lambda: {v for m in members for v in m.seen} >= set(range(n, n + 800)), 60,
                 "the new messages")
    finally:
        for m in members:
            m.close()


CRASHER = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
                  "session.timeout.ms": 2000, "heartbeat.interval.ms": 300,
                  "auto.offset.reset": "earliest"})
    c.subscribe([sys.argv[3]], on_assign=lambda c, ps: print("assigned", len(ps), flush=True))
    while True:
        c.poll(0.1)
""")


def test_a_crashed_member_is_expired_and_its_partitions_reassigned(node):
    topic, group, parts = "grp-crash", "g-crash", 4
    make_topic(node, topic, parts)
    survivor = Member(node, group, topic, "range", **{"session.timeout.ms": 2000})
    crasher = subprocess.Popen([sys.executable, "-c", CRASHER, node.bootstrap, group, topic],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert crasher.stdout is not None
        poll_all([survivor], lambda: len(survivor.assignment) == 2, 60, "two members sharing 4 partitions")
        crasher.kill()  # no LeaveGroup: the coordinator must notice the silence
        crasher.wait(10)
        poll_all([survivor], lambda: len(survivor.assignment) == parts, 30,
                 "the session timeout to hand the crashed member's partitions over")
    finally:
        crasher.kill()
        survivor.close()


def committed(node, group: str, topic: str, parts: int) -> list[int]:
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": group})
    try:
        return [tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(parts)], timeout=10)]
    finally:
        c.close()


@pytest.mark.parametrize("clean", [True, False], ids=["sigterm", "kill9"])
def test_commits_survive_a_restart(node, clean):
    topic, group, parts = "grp-commits", "g-commits", 3
    make_topic(node, topic, parts)
    produce(node, topic, 300, parts)
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(parts)])
    c.commit(offsets=[TopicPartition(topic, 0, 10), TopicPartition(topic, 1, 20),
                      TopicPartition(topic, 2, 100)], asynchronous=False)
    c.close()
    assert committed(node, group, topic, parts) == [10, 20, 100]
    node.restart(clean=clean)
    assert committed(node, group, topic, parts) == [10, 20, 100]
    # A new member of the group starts where the commits say.
    m = Member(node, group, topic, "range")
    try:
        poll_all([m], lambda: len(m.seen) >= 300 - 130, 60, "the rest of the messages")
        # Message v went to partition v % 3 at offset v // 3.
        assert sorted(m.seen) == [v for v in range(300) if v // 3 >= (10, 20, 100)[v % 3]]
    finally:
        m.close()


def test_kafka_python_group_consumers_resume_from_commits(node):
    from kafka import KafkaConsumer
    topic, group, parts = "grp-kp", "g-kp", 2
    make_topic(node, topic, parts)
    produce(node, topic, 200, parts)

    def consume(n: int) -> list[int]:
        c = KafkaConsumer(topic, bootstrap_servers=node.bootstrap, group_id=group,
                          auto_offset_reset="earliest", enable_auto_commit=False,
                          consumer_timeout_ms=15_000, session_timeout_ms=6000,
                          heartbeat_interval_ms=500)
        got = []
        try:
            for msg in c:
                got.append(int(msg.value))
                if len(got) == n:
                    c.commit()
                    break
        finally:
            c.close()
        return got

    first = consume(120)
    second = consume(80)
    assert sorted(first + second) == list(range(200)), "resuming skipped or repeated messages"


def test_static_member_restart_does_not_rebalance_the_others(node):
    topic, group, parts = "grp-static", "g-static", 4
    make_topic(node, topic, parts)
    conf = {"session.timeout.ms": 10_000}
    a = Member(node, group, topic, "range", **{**conf, "group.instance.id": "static-a"})
    b = Member(node, group, topic, "range", **{**conf, "group.instance.id": "static-b"})
    try:
        poll_all([a, b], lambda: len(a.assignment) == 2 and len(b.assignment) == 2, 60, "a stable group")
        rebalances_a, b_partitions = a.rebalances, set(b.assignment)
        b.close()  # static members send no LeaveGroup: their partitions wait for them
        b = Member(node, group, topic, "range", **{**conf, "group.instance.id": "static-b"})
        poll_all([a, b], lambda: len(b.assignment) == 2, 30, "the static member to get its partitions back")
        assert b.assignment == b_partitions
        # Give a rebalance the chance to show itself before checking there was none.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            a.poll(0.1)
            b.poll(0.1)
        assert a.rebalances == rebalances_a, "the other member was rebalanced"
    finally:
        a.close()
        b.close()


def test_group_admin_list_describe_offsets_delete(node):
    topic, group, parts = "grp-admin", "g-admin", 2
    make_topic(node, topic, parts)
    produce(node, topic, 50, parts)
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": group, "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
    c.commit(offsets=[TopicPartition(topic, 0, 7, metadata="checkpoint-7"), TopicPartition(topic, 1, 9)],
             asynchronous=False)
    c.close()
    a = AdminClient({"bootstrap.servers": node.bootstrap})
    groups = a.list_consumer_groups().result(10)
    assert group in [g.group_id for g in groups.valid]
    from confluent_kafka import ConsumerGroupTopicPartitions
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    offsets = {tp.partition: (tp.offset, tp.metadata or "") for tp in res[group].result(10).topic_partitions}
    assert offsets == {0: (7, "checkpoint-7"), 1: (9, "")}
    res = a.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, 0, 3)])])
    res[group].result(10)
    assert committed(node, group, topic, parts) == [3, 9]
    a.delete_consumer_groups([group])[group].result(10)
    wait_until(lambda: group not in [g.group_id for g in a.list_consumer_groups().result(10).valid],
               10, "the group to be gone")
    assert committed(node, group, topic, parts) == [-1001, -1001]


def test_offsets_of_a_deleted_topic_are_dropped(node):
    group = "g-deleted-topic"
    make_topic(node, "grp-doomed", 2)
    make_topic(node, "grp-kept", 1)
    c = Consumer({"bootstrap.servers": node.bootstrap, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition("grp-doomed", 0, 1), TopicPartition("grp-doomed", 1, 2),
                      TopicPartition("grp-kept", 0, 3)], asynchronous=False)
    c.close()
    a = AdminClient({"bootstrap.servers": node.bootstrap})
    a.delete_topics(["grp-doomed"])["grp-doomed"].result(10)
    from confluent_kafka import ConsumerGroupTopicPartitions

    def topics_with_offsets() -> set[str]:
        res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
        return {tp.topic for tp in res[group].result(10).topic_partitions if tp.offset >= 0}

    wait_until(lambda: topics_with_offsets() == {"grp-kept"}, 10, "the deleted topic's offsets to go")
    # And they stay gone across a restart (tombstones were written).
    node.restart(clean=False)
    assert topics_with_offsets() == {"grp-kept"}
