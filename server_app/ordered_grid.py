"""A Grid that hands the strategy nodes and replies in partition order.

Two runs of the same seed should give the same metrics bit for bit, but
Flower's strategies see the world in an order that changes from run to run:

- replies arrive in the order clients finish, and the weighted mean of
  floating-point arrays depends on the order of its terms (float rounding
  alone has moved a 12-round FedAvg result by 1.2 points);
- in simulation node ids are random 64-bit numbers, drawn anew every run,
  and ``random.sample`` over them picks different partitions even from the
  same seeded RNG state.

:class:`OrderedGrid` wraps the ServerApp's Grid and fixes both: replies are
sorted by the partition id each ClientApp puts in its reply
(``client_app.app.tag_partition``), and ``get_node_ids`` lists nodes in
partition order once :meth:`OrderedGrid.learn_partitions` has asked them
(needed only when a round samples some of the nodes; with every node
sampled the sample's order does not matter because the replies are sorted).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from logging import INFO

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from common import keys

PARTITION_QUERY = "query.partition"
"""The message type of the one-off query that learns each node's partition."""
QUERY_CHUNK = 100
"""Partition queries in flight at once (see :meth:`OrderedGrid.learn_partitions`)."""


def reply_partition(msg: Message) -> int | None:
    """The partition id a reply carries (None for an error or an untagged reply)."""
    if msg.has_error() or keys.NODE not in msg.content.config_records:
        return None
    value = msg.content.config_records[keys.NODE].get(keys.PARTITION_ID)
    return int(value) if isinstance(value, int) else None


class OrderedGrid(Grid):
    """Delegates to ``grid``; nodes in partition order, replies sorted by partition."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.partitions: dict[int, int] = {}  # node id -> partition id

    def _node_key(self, node_id: int) -> tuple[float, int]:
        return (self.partitions.get(node_id, math.inf), node_id)

    def _reply_key(self, msg: Message) -> tuple[float, int]:
        partition = reply_partition(msg)
        node = msg.metadata.src_node_id
        if partition is not None:
            self.partitions[node] = partition
            return (partition, node)
        return self._node_key(node)

    def learn_partitions(
        self, min_nodes: int = 1, timeout: float = 600.0, chunk: int = QUERY_CHUNK
    ) -> dict[int, int]:
        """Ask every connected node its partition id (one light query per node).

        Waits, as Flower's sampling does, until ``min_nodes`` are connected.
        At most ``chunk`` queries are in flight at once: Flower's simulation
        engine holds every pending message with its node's context, and 1,000
        at once raised the ServerApp process's peak memory by 0.8 GB.
        """
        while len(nodes := list(self._grid.get_node_ids())) < min_nodes:
            log(INFO, "Waiting for nodes: %d of %d connected", len(nodes), min_nodes)
            time.sleep(1)
        for start in range(0, len(nodes), chunk):
            messages = [
                self._grid.create_message(
                    RecordDict({keys.CONFIG: ConfigRecord()}), PARTITION_QUERY, node, "0"
                )
                for node in nodes[start : start + chunk]
            ]
            for reply in self._grid.send_and_receive(messages, timeout=timeout):
                self._reply_key(reply)  # records the node's partition
        missing = [n for n in nodes if n not in self.partitions]
        log(
            INFO,
            "Partition ids learnt from %d of %d nodes%s",
            len(nodes) - len(missing),
            len(nodes),
            f" (no answer from {missing}: they sort last, by node id)"
            if missing
            else "",
        )
        return dict(self.partitions)

    # The Grid interface, delegated.
    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(
            content, message_type, dst_node_id, group_id, ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self._grid.get_node_ids(), key=self._node_key)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return sorted(self._grid.pull_messages(message_ids), key=self._reply_key)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = self._grid.send_and_receive(messages, timeout=timeout)
        return sorted(replies, key=self._reply_key)
