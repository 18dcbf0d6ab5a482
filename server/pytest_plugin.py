"""A pytest plugin shipped with gearproto: the ``gearproto_server`` fixture.

Installed through the ``pytest11`` entry point, so any project that has gearproto
installed can write::

    def test_my_worker(gearproto_server):
        host, port = gearproto_server.address
        ...

The fixture starts a fresh :class:`~gearproto.server.JobServer` on a free loopback
port in a background thread for each test and stops it afterwards.  Settings can be
given with the ``gearproto_server`` marker: ``@pytest.mark.gearproto_server(job_retries=2)``
(any :class:`~gearproto.server.ServerConfig` field).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gearproto.server import JobServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "gearproto_server(**settings): ServerConfig settings for the gearproto_server fixture",
    )


@pytest.fixture
def gearproto_server(request: pytest.FixtureRequest) -> Iterator[JobServer]:
    """A running gearproto job server on 127.0.0.1 (a free port), for one test."""
    from gearproto.server import JobServer

    settings: dict[str, Any] = {}
    marker = request.node.get_closest_marker("gearproto_server")
    if marker is not None:
        settings = dict(marker.kwargs)
    with JobServer("127.0.0.1", 0, **settings) as server:
        yield server
