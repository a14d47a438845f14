"""The seed's STOMP client (Python `stomp.py`), for ActiveMQ (or RabbitMQ's STOMP plugin).

send:    connect as user/password and send `Hello STOMP` to `/queue/test` -- the seed, with a
         receipt so it exits only once the broker has the message.
receive: the seed subscribes to `/queue/test` with auto ack. The bridge reads `/queue/test`
         (a queue gives each message to one consumer, so a subscriber there would compete
         with the bridge); what the bridge delivers to STOMP goes to `/topic/test`. The
         receiver subscribes there, with auto ack, and waits for the expected messages.

Broker: STOMP_URL (stomp://user:password@host:port), else localhost:61613 as user/password.
"""

import sys
import threading

import stomp

from common import Expectation, arguments, endpoint, say


class Listener(stomp.ConnectionListener):
    def __init__(self, expectation=None):
        self.expectation = expectation
        self.receipts = {}
        self.all_received = threading.Event()
        self.lock = threading.Lock()

    def expect_receipt(self, receipt):
        event = threading.Event()
        with self.lock:
            self.receipts[receipt] = event
        return event

    def on_receipt(self, frame):
        with self.lock:
            event = self.receipts.get(frame.headers.get("receipt-id"))
        if event:
            event.set()

    def on_error(self, frame):
        say("STOMP error: " + frame.body)

    def on_message(self, frame):
        if self.expectation and self.expectation.got(frame.body):
            self.all_received.set()


def connect(args, listener):
    host, port, user, password = endpoint("STOMP_URL", 61613, "user", "password")
    conn = stomp.Connection([(args.host or host, args.port or port)])
    conn.set_listener("", listener)
    conn.connect(user, password, wait=True)
    return conn


def send(args):
    listener = Listener()
    conn = connect(args, listener)
    sent = listener.expect_receipt("send-1")
    conn.send(body="Hello STOMP", destination="/queue/test", headers={"receipt": "send-1"})
    if not sent.wait(args.timeout):
        say("no receipt for the SEND within %s s" % args.timeout)
        return 1
    say(" [x] Sent 'Hello STOMP'")
    conn.disconnect()
    return 0


def receive(args):
    expectation = Expectation(args.expect, args.timeout)
    listener = Listener(expectation)
    conn = connect(args, listener)
    subscribed = listener.expect_receipt("sub-1")
    conn.subscribe(destination="/topic/test", id=1, ack="auto", headers={"receipt": "sub-1"})
    if not subscribed.wait(expectation.left()):
        say("no receipt for the SUBSCRIBE")
        return 1
    say("ready: subscribed to /topic/test")
    listener.all_received.wait(expectation.left())
    conn.disconnect()
    return expectation.finish()


if __name__ == "__main__":
    arguments_ = arguments(__doc__.splitlines()[0])
    sys.exit(send(arguments_) if arguments_.mode == "send" else receive(arguments_))
