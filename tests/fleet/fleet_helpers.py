"""Helpers shared by the fleet tests."""

from __future__ import annotations

from lego_embed.fleet.spec import ClusterSpec, cluster_from_dict


def make_cluster(gpus: int = 8, nodes: int = 1) -> ClusterSpec:
    """A cluster of `nodes` nodes with `gpus` h100-64gb GPUs each, adapters on a PVC."""
    return cluster_from_dict({
        "name": "test", "gpu": "h100-64gb", "namespace": "npc-test",
        "nodes": [{"name": f"node-{i}", "gpus": gpus} for i in range(nodes)],
        "adapter_storage": {"kind": "pvc", "claim_name": "npc-adapters",
                            "mount_path": "/adapters"}})
