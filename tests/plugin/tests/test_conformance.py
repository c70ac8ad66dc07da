"""Stormlock's conformance suite, run against this plugin."""

from stormlock.testing.conformance import *  # noqa: F403
