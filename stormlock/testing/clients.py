"""Clients that press on a server the way a busy day does, on loopback:
CI jobs waiting in line through the API, and connections that send their
request a few bytes at a time. Shared by the tests and bench/."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse


def slow_request(kind: str, token: str = "") -> bytes:
    """A request to trickle: `headers` (never finishes its headers, no
    token) or `body` (whole headers with `token`, then a slow body)."""
    if kind == "headers":
        return (
            b"POST /slack/events HTTP/1.1\r\nHost: x\r\n"
            b"X-Slack-Request-Timestamp: 1\r\nX-Padding: " + b"a" * 400
        )
    return (
        b"POST /v1/acquire HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 400\r\n\r\n" + b" " * 400
    )


def trickle(
    port: int, request: bytes, stop: threading.Event, every: float = 0.25
) -> float | None:
    """Send `request` 4 bytes every `every` s until it is all sent or `stop`
    is set; the seconds until the server closed the connection, if it did."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        started = time.monotonic()
        try:
            for at in range(0, len(request), 4):
                sock.sendall(request[at : at + 4])
                if stop.wait(every):
                    return None
        except OSError:  # closed by the server
            return time.monotonic() - started
    return None


def wait_in_line(
    url: str,
    token: str,
    resource: str,
    stop: threading.Event,
    answers: list[dict[str, object]],
) -> None:
    """A CI job's `--wait` over the API, until `stop`: acquires that wait 5 s
    and keep their place, asking again when the server says (`retry_after`);
    each answer's body is added to `answers`."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, 30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ticket = None
    try:
        while not stop.is_set():
            body = {"resource": resource, "wait": 5, "keep_place": True}
            if ticket:
                body["ticket"] = ticket
            connection.request("POST", "/v1/acquire", json.dumps(body), headers)
            response = connection.getresponse()
            data = json.loads(response.read() or b"{}")
            data["status"] = response.status
            answers.append(data)
            ticket = data.get("ticket") if isinstance(data.get("ticket"), str) else None
            retry = data.get("retry_after")
            if isinstance(retry, int | float):
                stop.wait(retry)
    finally:
        connection.close()
