"""Federated learning on Flower 1.42: partitions of a training set (:mod:`.partition`),
malicious clients (:mod:`.clients`), and the ClientApp / ServerApp / strategies run on
Flower's simulation engine (:mod:`.apps`; imports Flower, so import it directly)."""

from dlsec.defenses.federated.clients import (
    ATTACKS,
    MaliciousClientError,
    check_attack,
    choose_malicious,
    default_scale,
    flip_labels,
    malicious_count,
    poison_update,
)
from dlsec.defenses.federated.partition import (
    SCHEMES,
    PartitionError,
    PartitionScheme,
    label_counts,
    parse_partition,
    partition,
)

__all__ = ["ATTACKS", "SCHEMES", "MaliciousClientError", "PartitionError", "PartitionScheme",
           "check_attack", "choose_malicious", "default_scale", "flip_labels", "label_counts",
           "malicious_count", "parse_partition", "partition", "poison_update"]
