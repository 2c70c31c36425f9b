from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from fixtures.fake_kimi import FakeKimi

#: the two upstream dialects every end-to-end suite runs against
DIALECTS = ("legacy", "connect")

# `fast` keeps the default run inside CI's budget on 2 cores, and the same on every run: fixed
# examples (derandomized, seeded from each test) and no example database, so a CI run cannot
# fail by chance and block every landing. `deep` is for hunting, at random, many more examples:
#   HYPOTHESIS_PROFILE=deep scripts/dev test
settings.register_profile(
    "fast",
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


def pytest_collection_modifyitems(config, items):
    # Deep Hypothesis runs take minutes per property; the 120 s guard against hangs is for the
    # default run only.
    if os.environ.get("HYPOTHESIS_PROFILE") == "deep":
        for item in items:
            item.add_marker(pytest.mark.timeout(0))


@pytest.fixture
async def fake():
    """A fake Kimi (both dialects) on an ephemeral loopback port, stopped after the test."""
    async with FakeKimi() as kimi:
        yield kimi


@pytest.fixture(params=DIALECTS)
def dialect(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on loopback for the whole session (skips without the binaries;
    see tests/pg_server.py). Tests take a fresh database each: `postgres_server.new_database()`."""
    from tests.pg_server import PostgresServer, need_postgres

    server = PostgresServer(need_postgres())
    server.start()
    try:
        yield server
    finally:
        server.stop()
