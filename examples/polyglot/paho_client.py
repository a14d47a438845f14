"""The seed's MQTT client (Python `paho-mqtt` 2.x, MQTT 3.1.1 like the seed).

send:    connect, and on connect publish `Hello MQTT` to `test/topic` -- the seed, with QoS 1
         and a disconnect once Mosquitto acknowledged it instead of looping forever.
receive: subscribe to `test/topic` and wait for the expected messages (paho's own message
         comes straight from Mosquitto; the others through the bridge).

Broker: MQTT_URL (mqtt://host:port), else localhost:1883.
"""

import sys
import threading

import paho.mqtt.client as mqtt

from common import Expectation, arguments, endpoint, say, fail


def client(args):
    host, port, _, _ = endpoint("MQTT_URL", 1883)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    return c, args.host or host, args.port or port


def send(args):
    c, host, port = client(args)

    # Callback when the connection succeeded
    def on_connect(client, userdata, flags, reason_code, properties):
        say("Connected with result code " + str(reason_code))
        if reason_code.is_failure:
            fail("MQTT connect failed: " + str(reason_code))
        client.publish("test/topic", "Hello MQTT", qos=1)

    def on_publish(client, userdata, mid, reason_code, properties):
        say(" [x] Sent 'Hello MQTT'")
        client.disconnect()

    c.on_connect = on_connect
    c.on_publish = on_publish
    c.connect(host, port, 60)
    c.loop_forever()
    return 0


def receive(args):
    expectation = Expectation(args.expect, args.timeout)
    c, host, port = client(args)
    all_received = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            say("MQTT connect failed: " + str(reason_code))
            all_received.set()  # give up now: finish() reports what is missing
            return
        client.subscribe("test/topic", qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        say("ready: subscribed to test/topic")

    def on_message(client, userdata, message):
        if expectation.got(message.payload):
            all_received.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message
    c.connect(host, port, 60)
    c.loop_start()  # the network loop runs in a thread; callbacks run there
    all_received.wait(expectation.left())
    c.disconnect()
    c.loop_stop()
    return expectation.finish()


if __name__ == "__main__":
    arguments_ = arguments(__doc__.splitlines()[0])
    sys.exit(send(arguments_) if arguments_.mode == "send" else receive(arguments_))
