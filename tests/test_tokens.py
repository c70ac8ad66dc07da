"""API tokens on every backend: kept as hashed records beside the leases."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest

from stormlock import Backend
from stormlock.errors import InvalidInput, NotAllowed, UsageError
from stormlock.names import RECORD_PREFIX
from stormlock.tokens import TOKEN_FORM, Tokens, digest, may_create


def test_tokens_are_created_verified_listed_and_revoked(backend: Backend) -> None:
    tokens = Tokens(backend)
    secret, _ = tokens.create(
        "deploy", "ci-deploy", "prod-*, staging-*", read_only=True, created_by="admin"
    )
    assert len(secret) == len("stl_") + 43 and secret.startswith("stl_")
    found = tokens.verify(secret)
    assert found is not None and found.name == "deploy"
    assert (found.principal, found.resources, found.read_only) == (
        "ci-deploy",
        ("prod-*", "staging-*"),
        True,
    )
    assert tokens.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert tokens.verify("") is None and tokens.verify("stl_" + "x" * 43) is None
    # The store holds its hash, never the secret.
    stored = backend.list_prefix(RECORD_PREFIX)
    assert stored and all(secret not in (lease.note or "") for lease in stored)
    assert any(digest(secret) in (lease.note or "") for lease in stored)
    [listed] = tokens.list("ci-deploy")
    assert listed.name == "deploy" and listed.last_used is not None
    assert tokens.list("someone-else") == []
    with pytest.raises(UsageError, match="already has a token named"):
        tokens.create("deploy", "ci-deploy")
    assert tokens.revoke("deploy", "ci-deploy")
    assert tokens.verify(secret) is None
    assert not tokens.revoke("deploy", "ci-deploy")
    assert tokens.list() == []


def test_a_token_stops_working_when_it_expires(backend: Backend) -> None:
    tokens = Tokens(backend)
    secret, _ = tokens.create("short", "ci", expires=timedelta(milliseconds=400))
    assert tokens.verify(secret) is not None
    deadline = time.monotonic() + 10
    while tokens.verify(secret) is not None:
        assert time.monotonic() < deadline, "the token outlived its expiry"
        time.sleep(0.05)


def test_scope_and_names_are_checked(tmp_path: Path) -> None:
    from stormlock.backends.sqlite import SQLite

    with SQLite(path=str(tmp_path / "tokens.db")) as store:
        tokens = Tokens(store)
        for name in ("", "a b", "x" * 65, "-x", "a/b", "é"):
            with pytest.raises(InvalidInput):
                tokens.create(name, "ci")
        with pytest.raises(InvalidInput):
            tokens.create("ok", "ci", ",".join(f"g{n}-*" for n in range(21)))
        with pytest.raises(InvalidInput):
            tokens.create("ok", "ci", "prod *")
        with pytest.raises(InvalidInput):
            tokens.create("ok", "ci", expires=timedelta(days=4000))
        secret, token = tokens.create("scoped", "ci", "prod-*", read_only=True)
        assert re.fullmatch(TOKEN_FORM, secret)
        assert token.refusal("prod-db", write=False) is None
        assert "read-only" in (token.refusal("prod-db", write=True) or "")
        assert "scope" in (token.refusal("staging", write=False) or "")
    with pytest.raises(NotAllowed):
        may_create("alice", "ci-deploy", admin=False, delegate=False)
    may_create("alice", "alice", admin=False, delegate=False)
    may_create("carol", "ci-deploy", admin=True, delegate=False)
