"""What the three seed clients share: where the broker is, and the receive loop's bookkeeping.

Each client reads its broker from an environment variable holding a URL (the same variable
the rule file uses), else falls back to the seed's localhost port. `--host`/`--port` on the
command line win over both.
"""

import argparse
import os
import sys
import time
from urllib.parse import unquote, urlsplit

#: The three seed messages: each receiver waits for all of them.
SEED_MESSAGES = ["Hello, World!", "Hello MQTT", "Hello STOMP"]


def endpoint(env_var, default_port, default_user=None, default_password=None):
    """(host, port, user, password) from `env_var` (a URL) or the seed's defaults."""
    url = os.environ.get(env_var)
    if not url:
        return "localhost", default_port, default_user, default_password
    parts = urlsplit(url)
    return (
        parts.hostname or "localhost",
        parts.port or default_port,
        unquote(parts.username) if parts.username else default_user,
        unquote(parts.password) if parts.password else default_password,
    )


def arguments(description):
    """`send` or `receive`, with `--host`, `--port`, `--expect` and `--timeout`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("mode", choices=["send", "receive"])
    parser.add_argument("--host", help="broker host (default: from the URL variable, else localhost)")
    parser.add_argument("--port", type=int, help="broker port (default: from the URL variable, else the seed's)")
    parser.add_argument(
        "--expect",
        action="append",
        help="receive: a message to wait for (repeatable; default: the three seed messages)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="receive/send: seconds to wait at most")
    return parser.parse_args()


def say(text):
    """One line on stdout, flushed at once: run.sh watches these lines."""
    print(text, flush=True)


class Expectation:
    """The messages a receiver waits for, and what has arrived."""

    def __init__(self, expected, timeout):
        self.missing = list(expected or SEED_MESSAGES)
        self.deadline = time.monotonic() + timeout

    def got(self, body):
        """Records one received body; True once every expected message arrived."""
        if isinstance(body, bytes):
            body = body.decode("utf-8", errors="replace")
        say("received: " + body)
        if body in self.missing:
            self.missing.remove(body)
        return not self.missing

    def done(self):
        return not self.missing

    def left(self):
        """Seconds left before the deadline (0 when it has passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def finish(self):
        """Exit status: 0 when everything arrived, 1 (naming what is missing) otherwise."""
        if self.done():
            say("all expected messages received")
            return 0
        say("missing: " + ", ".join(repr(m) for m in self.missing))
        return 1


def fail(text):
    print(text, file=sys.stderr, flush=True)
    sys.exit(1)
