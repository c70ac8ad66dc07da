"""The backend contract (stormlock.testing.conformance), run unchanged against
every built-in backend on a real server."""

from stormlock.testing.conformance import *  # noqa: F403
