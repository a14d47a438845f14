//! Request/reply across NATS and RabbitMQ, through the library.
//!
//! A NATS client asks, a RabbitMQ service answers, and a small gateway written with
//! polybridge carries requests one way and replies the other:
//!
//! ```text
//!  NATS requester ── rpc.upper (reply_to: _INBOX…) ──▶ gateway ── queue:rpc_queue ──▶ AMQP service
//!       ▲                                              (reply_to: rpc_replies,            │
//!       │                                               correlation id: the NATS inbox)    │
//!       └──────────── _INBOX… ◀── gateway ◀── queue:rpc_replies (correlation id) ◀─────────┘
//! ```
//!
//! ```text
//! cargo run -p polybridge --example request_reply -- nats://127.0.0.1:4222 amqp://guest:guest@127.0.0.1:5672/%2f
//! ```
//!
//! - The NATS side is plain NATS request/reply: the requester subscribes to an inbox and
//!   publishes with `reply_to` = that inbox (the NATS adapter maps `reply_to` to the native
//!   reply subject, so `nats req rpc.upper hello` works against the gateway too).
//! - The AMQP side is the RabbitMQ RPC tutorial's protocol: requests in queue `rpc_queue`,
//!   the reply published to the default exchange with routing key = the request's
//!   `reply-to` and the same `correlation-id` (the AMQP adapter's destination
//!   `queue:NAME`). A pika RPC server can take the service's place, and a pika RPC client
//!   can call the service (the tutorial declares `rpc_queue` non-durable: add
//!   `?durable=false` to the AMQP URL so both declare it alike).
//! - The gateway keeps no state: it puts the NATS inbox in the AMQP correlation id, and
//!   the service echoes it. Each delivery is acked only after the publish it caused was
//!   confirmed, so a crash in between redelivers instead of losing a request (core NATS
//!   itself is at most once).
//!
//! The bridge daemon routes one way per route and leaves `reply_to` and `correlation_id`
//! as they are; it cannot rewrite them. A cross-broker RPC through the bridge alone works
//! only when the requester's `reply_to` is a topic a return route carries back (say NATS
//! `replies.<id>`, with a route from AMQP `replies.#` to NATS `replies.{1}`, and a
//! responder that publishes its reply to that topic); for native clients on both sides
//! (NATS inboxes, AMQP reply queues) use a gateway like this one.
//!
//! Exit status 0 after three round trips.

use std::sync::Arc;
use std::time::Duration;

use polybridge::{Broker, Deadline, DeliveryStream, Message, Subscription, TopicPattern};

/// The NATS subject requests are sent to.
const SUBJECT: &str = "rpc.upper";
/// The RabbitMQ queue the service consumes (the RPC tutorial's name).
const REQUESTS: &str = "rpc_queue";
/// The RabbitMQ queue replies come back on.
const REPLIES: &str = "rpc_replies";

fn deadline() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

/// A subscription to the RabbitMQ queue `name` (declared if missing).
fn queue(name: &str) -> Subscription {
    Subscription::new(TopicPattern::literal(&format!("queue:{name}"), '.'))
        .option("declare", "true")
}

/// The RabbitMQ service: upper-cases each request and replies to its `reply-to` queue.
async fn service(amqp: Arc<dyn Broker>, mut requests: DeliveryStream) -> polybridge::Result<()> {
    while let Some(delivery) = requests.next().await {
        let delivery = delivery?;
        let request = String::from_utf8_lossy(&delivery.message.payload).into_owned();
        let Some(reply_to) = delivery.message.reply_to.clone() else {
            delivery.reject("a request without reply-to")?;
            continue;
        };
        let answer = request.to_uppercase();
        // Printed before replying, so the requester's lines follow the service's.
        println!("service    {request:?} → {answer:?}");
        let mut reply = Message::new(answer);
        reply.correlation_id = delivery.message.correlation_id.clone();
        amqp.publish(&format!("queue:{reply_to}"), &reply, deadline())
            .await?;
        delivery.ack()?;
    }
    Ok(())
}

/// NATS requests → AMQP requests.
async fn gateway_requests(
    amqp: Arc<dyn Broker>,
    mut requests: DeliveryStream,
) -> polybridge::Result<()> {
    while let Some(delivery) = requests.next().await {
        let delivery = delivery?;
        let Some(inbox) = delivery.message.reply_to.clone() else {
            delivery.reject("a request without a reply subject")?;
            continue;
        };
        let forward = Message::new(delivery.message.payload.clone())
            .with_reply_to(REPLIES)
            .with_correlation_id(inbox);
        amqp.publish(&format!("queue:{REQUESTS}"), &forward, deadline())
            .await?;
        delivery.ack()?;
    }
    Ok(())
}

/// AMQP replies → the NATS inbox named by their correlation id.
async fn gateway_replies(
    nats: Arc<dyn Broker>,
    mut replies: DeliveryStream,
) -> polybridge::Result<()> {
    while let Some(delivery) = replies.next().await {
        let delivery = delivery?;
        let Some(inbox) = delivery.message.correlation_id.clone() else {
            delivery.reject("a reply without correlation id")?;
            continue;
        };
        nats.publish(
            &inbox,
            &Message::new(delivery.message.payload.clone()),
            deadline(),
        )
        .await?;
        delivery.ack()?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> polybridge::Result<()> {
    let mut args = std::env::args().skip(1);
    let nats_url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let amqp_url = args
        .next()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let nats = polybridge::connect(&nats_url).await?;
    let amqp = polybridge::connect(&amqp_url).await?;
    println!("connected to {} and {}", nats.url(), amqp.url());

    // Every subscription is in place before the first request: the queues exist (RabbitMQ
    // returns a message no queue takes) and core NATS has the gateway's interest (it drops
    // what no one is subscribed to).
    let service_requests = amqp.subscribe(queue(REQUESTS)).await?;
    let gateway_replies_in = amqp.subscribe(queue(REPLIES)).await?;
    // A queue group: several gateways share the requests.
    let gateway_requests_in = nats
        .subscribe(Subscription::new(SUBJECT.parse()?).group("gateway"))
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(service(amqp.clone(), service_requests));
    tasks.spawn(gateway_replies(nats.clone(), gateway_replies_in));
    tasks.spawn(gateway_requests(amqp.clone(), gateway_requests_in));

    // The NATS requester: an inbox of its own, then requests with reply_to = the inbox.
    let inbox = format!("_INBOX.polybridge.{}", std::process::id());
    let mut answers = nats.subscribe(Subscription::new(inbox.parse()?)).await?;
    for word in ["hello", "xin chào", "polyglot"] {
        nats.publish(
            SUBJECT,
            &Message::new(word).with_reply_to(&inbox),
            deadline(),
        )
        .await?;
        let delivery = tokio::select! {
            answer = tokio::time::timeout(Duration::from_secs(10), answers.next()) => match answer {
                Ok(Some(delivery)) => delivery?,
                Ok(None) => return Err(polybridge::Error::closed("example", inbox.clone())),
                Err(_) => return Err(polybridge::Error::transient("example", SUBJECT, format!("no reply to {word:?} within 10 s"))),
            },
            // A part of the pipeline failed: report its error rather than a timeout.
            Some(ended) = tasks.join_next() => {
                return match ended {
                    Ok(Err(e)) => Err(e),
                    _ => Err(polybridge::Error::closed("example", "a gateway task")),
                };
            }
        };
        println!(
            "requester  {word:?} → {:?}",
            String::from_utf8_lossy(&delivery.message.payload)
        );
        delivery.ack()?;
    }
    tasks.abort_all();
    println!("done: 3 round trips NATS → RabbitMQ → NATS");
    Ok(())
}
