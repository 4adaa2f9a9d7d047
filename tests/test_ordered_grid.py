"""Replies in partition order and nodes listed in partition order, whatever the
order they arrive in or their (random) node ids."""

import random

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client_app.app import tag_partition
from common import keys
from server_app.ordered_grid import PARTITION_QUERY, OrderedGrid, reply_partition

# Random-looking node ids, as Flower's simulation draws them; node -> partition.
NODES = {9_113: 2, 77: 0, 5_021: 3, 640: 1}


def tagged_reply(msg: Message, partition: int | None) -> Message:
    content = RecordDict({keys.CONFIG: ConfigRecord({"x": 1})})
    if partition is not None:
        content[keys.NODE] = ConfigRecord({keys.PARTITION_ID: partition})
    return Message(content=content, reply_to=msg)


class ShufflingGrid:
    """Answers in a different random order every call; only some nodes tag."""

    def __init__(self, untagged=()):
        self.untagged = set(untagged)
        self.rng = random.Random(0)
        self.sent_types = []

    def get_node_ids(self):
        ids = list(NODES)
        self.rng.shuffle(ids)
        return ids

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(
            content=content, dst_node_id=dst_node_id, message_type=message_type
        )

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent_types += [m.metadata.message_type for m in messages]
        replies = [
            tagged_reply(
                m,
                None
                if m.metadata.dst_node_id in self.untagged
                else NODES[m.metadata.dst_node_id],
            )
            for m in messages
        ]
        self.rng.shuffle(replies)
        return replies


def _send(grid, nodes):
    messages = [
        Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes
    ]
    return list(grid.send_and_receive(messages))


def test_replies_come_sorted_by_the_partition_they_carry(task_identity):
    grid = OrderedGrid(ShufflingGrid())
    for _ in range(3):
        replies = _send(grid, NODES)
        assert [reply_partition(r) for r in replies] == [0, 1, 2, 3]


def test_untagged_replies_sort_after_tagged_ones_by_node_id(task_identity):
    grid = OrderedGrid(ShufflingGrid(untagged={9_113, 5_021}))
    replies = _send(grid, NODES)
    assert [r.metadata.src_node_id for r in replies] == [77, 640, 5_021, 9_113]


def test_nodes_are_listed_in_partition_order_once_learnt(task_identity):
    inner = ShufflingGrid()
    grid = OrderedGrid(inner)
    assert grid.learn_partitions(min_nodes=4) == NODES
    assert inner.sent_types == [PARTITION_QUERY] * 4
    for _ in range(3):  # the wrapped grid shuffles; the ordered one does not
        assert list(grid.get_node_ids()) == [77, 640, 9_113, 5_021]


def test_the_client_mod_tags_every_reply_with_its_partition(task_identity):
    context = Context(
        run_id=1,
        node_id=5,
        node_config={keys.PARTITION_ID: 3, keys.NUM_PARTITIONS: 4},
        state=RecordDict(),
        run_config={},
    )
    msg = Message(RecordDict(), dst_node_id=5, message_type=PARTITION_QUERY)
    reply = tag_partition(msg, context, lambda m, c: Message(RecordDict(), reply_to=m))
    assert reply_partition(reply) == 3


def test_the_node_sample_depends_on_seed_and_round_only(defaults, task_identity):
    """Flower's own retries draw from ``random`` too; the sample must not care."""
    from tests.test_strategies import build

    strategy = build("fedavg", defaults, fraction_train=0.5)
    strategy.sampling_seed = 42
    grid = OrderedGrid(ShufflingGrid())
    grid.learn_partitions(min_nodes=4)

    def sampled(server_round):
        random.random()  # someone else's draw, a different number of times
        for _ in range(server_round):
            random.random()
        messages = strategy.configure_train(
            server_round, ArrayRecord(), ConfigRecord(), grid
        )
        return sorted(m.metadata.dst_node_id for m in messages)

    assert sampled(1) == sampled(1) and sampled(2) == sampled(2)
    samples = {tuple(sampled(r)) for r in range(1, 9)}
    assert len(samples) > 1  # it still changes from round to round
