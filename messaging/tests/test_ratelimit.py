"""The per-device send budget: one count for REST and the relay socket."""

from __future__ import annotations

import uuid
from typing import TypedDict

import pytest

from messaging import ratelimit


class Budget(TypedDict):
    rate: float
    burst: int


BUDGET = Budget(rate=1.0, burst=20)  # 20 sends per 20 s


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    ratelimit.reset()


async def test_a_socket_draws_ahead_but_never_past_the_budget() -> None:
    allowance = ratelimit.Allowance("send", uuid.uuid4())

    waits = [await allowance.take(**BUDGET) for _ in range(21)]

    assert waits[:20] == [0.0] * 20
    assert 0 < waits[20] <= 20


async def test_rest_and_socket_sends_share_the_device_budget() -> None:
    device = uuid.uuid4()
    for _ in range(15):
        assert ratelimit.take("send", device, **BUDGET) == 0.0
    allowance = ratelimit.Allowance("send", device)

    # Fewer than a whole draw is left: the socket takes them one by one.
    waits = [await allowance.take(**BUDGET) for _ in range(6)]

    assert waits[:5] == [0.0] * 5
    assert waits[5] > 0
    assert ratelimit.take("send", device, **BUDGET) > 0


async def test_each_device_has_its_own_budget() -> None:
    first = ratelimit.Allowance("send", uuid.uuid4())
    for _ in range(20):
        await first.take(**BUDGET)

    assert await ratelimit.Allowance("send", uuid.uuid4()).take(**BUDGET) == 0.0
