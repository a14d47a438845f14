"""The seed's RabbitMQ client (Python `pika`).

send:    declare queue `hello` and publish `Hello, World!` on the default exchange with
         routing key `hello` -- the seed, plus a publisher confirm so it exits only once
         RabbitMQ has the message.
receive: the consumer side. The bridge reads queue `hello` (a queue gives each message to one
         consumer, so a second consumer there would compete with the bridge); what the bridge
         delivers to RabbitMQ goes to exchange `amq.topic` with routing key `hello`. The
         consumer binds a queue of its own to it -- the RabbitMQ tutorial's publish/subscribe
         pattern -- and waits for the expected messages.

Broker: AMQP_URL (amqp://user:password@host:port/vhost), else localhost:5672 as guest.
"""

import os
import sys

import pika

from common import Expectation, arguments, endpoint, say


def connect(args):
    url = os.environ.get("AMQP_URL")
    if url and not (args.host or args.port):
        params = pika.URLParameters(url)
    else:
        host, port, user, password = endpoint("AMQP_URL", 5672, "guest", "guest")
        params = pika.ConnectionParameters(
            args.host or host,
            args.port or port,
            credentials=pika.PlainCredentials(user, password),
        )
    return pika.BlockingConnection(params)


def send(args):
    connection = connect(args)
    channel = connection.channel()
    channel.queue_declare(queue="hello")
    channel.confirm_delivery()  # basic_publish now returns once RabbitMQ confirmed it
    channel.basic_publish(exchange="", routing_key="hello", body="Hello, World!")
    say(" [x] Sent 'Hello, World!'")
    connection.close()
    return 0


def receive(args):
    expectation = Expectation(args.expect, args.timeout)
    connection = connect(args)
    channel = connection.channel()
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(exchange="amq.topic", queue=queue, routing_key="hello")

    def on_message(ch, method, properties, body):
        if expectation.got(body):
            ch.stop_consuming()

    channel.basic_consume(queue=queue, on_message_callback=on_message, auto_ack=True)
    say("ready: consuming amq.topic/hello")
    connection.call_later(expectation.left(), channel.stop_consuming)
    channel.start_consuming()
    connection.close()
    return expectation.finish()


if __name__ == "__main__":
    arguments_ = arguments(__doc__.splitlines()[0])
    sys.exit(send(arguments_) if arguments_.mode == "send" else receive(arguments_))
