"""The HTTP API for automation: leases with tokens instead of the store's
credentials (`stormlock serve`, or beside the Slack endpoint in
`stormlock-bot serve`). See docs/api.md."""
