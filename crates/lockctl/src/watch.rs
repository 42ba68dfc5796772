//! [`Client::watch`]: a resource's state, then its changes, as a stream of events.

use protocol::cmd::{Unwatch, Watch, WatchEvent};
use protocol::{Command, RequestId};
use tokio::sync::mpsc;

use crate::client::{name, Client};
use crate::error::ClientError;

/// An open watch: read its events with [`WatchStream::next`]. The first is the resource's
/// state (`WatchChange::State`); a `WatchChange::Resync` says the server dropped events this
/// client was too slow to read, and gives the state instead.
#[derive(Debug)]
pub struct WatchStream {
    id: RequestId,
    events: mpsc::UnboundedReceiver<WatchEvent>,
    client: Client,
}

impl WatchStream {
    /// The `watch` request's id, which tags its events.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event. [`ClientError::ConnectionLost`] once the session is lost: the watch
    /// ended with it, and events may have been missed.
    pub async fn next(&mut self) -> Result<WatchEvent, ClientError> {
        self.events.recv().await.ok_or(ClientError::ConnectionLost)
    }

    /// Ends the watch: no event of it follows.
    pub async fn unwatch(self) -> Result<(), ClientError> {
        let result = self
            .client
            .call_empty(Command::Unwatch(Unwatch { target: self.id }))
            .await;
        self.client.calls().forget_watch(self.id);
        result
    }
}

impl Client {
    /// `watch`: subscribes to `resource`. The stream's first event is its current state.
    pub async fn watch(&self, resource: &str) -> Result<WatchStream, ClientError> {
        let resource = name(resource)?;
        let (sender, events) = mpsc::unbounded_channel();
        let (id, reply) = self
            .calls()
            .register_watch(Command::Watch(Watch { resource }), sender)?;
        if let Err(err) = self.await_reply("watch", reply).await {
            self.calls().forget_watch(id);
            return Err(err);
        }
        Ok(WatchStream {
            id,
            events,
            client: self.clone(),
        })
    }
}
