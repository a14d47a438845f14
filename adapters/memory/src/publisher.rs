//! Publishing to the in-memory broker: a publish is confirmed once the message is in the
//! topic's log, which happens before `publish` returns.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use polybridge_core::{Deadline, Error, Message, Position, Publisher, Receipt, Result};

use crate::MemoryBroker;

#[async_trait]
impl Publisher for MemoryBroker {
    async fn publish(
        &self,
        destination: &str,
        message: &Message,
        _deadline: Deadline,
    ) -> Result<Receipt> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed("memory", "the publisher"));
        }
        let offset = self.shared.append(destination, message.clone())?;
        Ok(Receipt {
            position: Some(Position::Sequence(offset)),
            duplicate: false,
        })
    }

    async fn close(&self, _deadline: Deadline) -> Result<()> {
        // Publishes complete synchronously, so nothing is outstanding.
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
