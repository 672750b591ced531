"""Pull failures caused by the network: one line naming the host and what to do."""

from __future__ import annotations

import socket

import httpx

from corral.registry.network import network_failure


def test_a_dns_failure_names_the_host_and_the_way_out() -> None:
    request = httpx.Request("GET", "https://huggingface.co/api/models/org/repo")
    try:
        try:
            raise socket.gaierror(-2, "Name or service not known")
        except socket.gaierror as cause:
            raise httpx.ConnectError(
                "[Errno -2] Name or service not known", request=request
            ) from cause
    except httpx.ConnectError as exc:
        message = network_failure(exc)
    assert message is not None
    assert message.startswith("Could not reach huggingface.co: Name or service not known.")
    assert "HF_ENDPOINT" in message and "corral import" in message


def test_other_failures_are_not_the_network() -> None:
    assert network_failure(ValueError("bad header")) is None
    assert network_failure(KeyError("sha")) is None
