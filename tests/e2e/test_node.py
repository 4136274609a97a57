"""The real node's network, checked on the host while the node runs."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.node import BRIDGE, BRIDGE_MAC

NET_ADDR_SET = "3"  # /sys/class/net/*/addr_assign_type: the address was set explicitly


def test_the_bridge_keeps_its_address_when_pods_come_and_go(node) -> None:
    """Before the fix the bridge had no address of its own (addr_assign_type 1) and took its ports' lowest MAC:
    every pod that came or went could change the gateway's MAC under the other pods' ARP caches."""
    sysfs = Path("/sys/class/net", BRIDGE)
    assert (sysfs / "addr_assign_type").read_text().strip() == NET_ADDR_SET
    assert (sysfs / "address").read_text().strip() == BRIDGE_MAC
