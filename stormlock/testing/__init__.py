"""Stormlock's conformance kit: the suite every backend passes, on real
servers, for plugin authors too.

It needs the `testing` extra (`pip install 'stormlock-leases[testing]'`: pytest,
mirakuru, moto's server) and the servers' binaries on PATH (redis-server,
postgres/initdb, etcd). In a plugin's repository, with one fixture:

    # conftest.py
    import pytest
    from stormlock.testing.backends import BackendConfig

    pytest_plugins = ["stormlock.testing.plugin"]

    @pytest.fixture
    def backend_config(tmp_path):
        return BackendConfig("mystore", {"path": str(tmp_path / "leases")})

    # test_conformance.py
    from stormlock.testing.conformance import *  # noqa: F403

The plugin also brings the real-server fixtures (`redis_server`,
`postgres_server`, `etcd_server`, `dynamodb_server`, each with `.options`
for a backend section and `.stop()`/`.start()` for outages) and, in
`stormlock.testing.faults`, a silent server and a partition proxy.
"""
