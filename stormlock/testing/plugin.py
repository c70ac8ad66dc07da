"""The conformance kit's pytest plugin: `pytest_plugins = ["stormlock.testing.plugin"]`.

Fixtures: `backend_config` (override it with your backend's; by default it
runs every built-in backend), `make_backend`, `backend`, `resource`, and the
real servers `redis_server`, `postgres_server`, `etcd_server`,
`dynamodb_server`, and `api_server` (the API, for the http backend).
"""

from stormlock.testing.backends import (  # noqa: F401 - fixtures
    backend,
    backend_config,
    make_backend,
    resource,
)
from stormlock.testing.servers import (  # noqa: F401 - fixtures
    api_server,
    dynamodb_server,
    etcd_server,
    postgres_server,
    redis_server,
)
