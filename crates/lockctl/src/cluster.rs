//! Cluster commands for operators: each node's view of the cluster, and membership changes.

use protocol::cmd::{AddNode, ClusterStatusOk, Hello, RemoveNode};
use protocol::{Command, ErrorCode, RequestId};

use crate::client::{Client, ClientBuilder};
use crate::error::ClientError;
use crate::link::dial;

/// How long `cluster_status_of_each` waits for each node's answer, at most (a shorter reply
/// timeout wins).
const STATUS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

impl Client {
    /// `add_node`: the leader adds the node as a learner, waits for it to catch up with the
    /// log, then makes it a voter. Answers once it is a voter.
    pub async fn add_node(
        &self,
        node_id: u64,
        client: &str,
        peer: &str,
    ) -> Result<(), ClientError> {
        self.call_empty(Command::AddNode(AddNode {
            node_id,
            client: client.to_owned(),
            peer: peer.to_owned(),
        }))
        .await
    }

    /// `remove_node`: the leader takes the node out of the cluster.
    pub async fn remove_node(&self, node_id: u64) -> Result<(), ClientError> {
        self.call_empty(Command::RemoveNode(RemoveNode { node_id }))
            .await
    }

    /// `cluster_status`: the cluster as the connected node sees it.
    pub async fn cluster_status(&self) -> Result<ClusterStatusOk, ClientError> {
        self.call(Command::ClusterStatus).await
    }
}

impl ClientBuilder {
    /// Asks every address given (the nodes of a cluster) for its view of the cluster, without
    /// opening a session: this works while no leader is elected, which is when it matters.
    pub async fn cluster_status_of_each(
        &self,
    ) -> Vec<(String, Result<ClusterStatusOk, ClientError>)> {
        let (addrs, tls, auth) = self.target();
        let mut views = Vec::new();
        for addr in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            // A paused node must not hang the whole command.
            let timeouts = self.timeouts();
            let patience = STATUS_PATIENCE.min(timeouts.reply);
            let deadline = Some(tokio::time::Instant::now() + patience);
            let view = async {
                let mut link = dial(addr, tls, timeouts.connect).await?;
                if let Some(secret) = auth {
                    // Authenticates the connection; a follower then says `not_leader`, which
                    // is fine: `cluster_status` is answered by every node.
                    let hello = Hello {
                        auth: Some(secret.to_owned()),
                        ..Hello::default()
                    };
                    match link.hello(RequestId(1), hello, deadline).await {
                        Err(ClientError::Server(error)) if error.code == ErrorCode::NotLeader => {}
                        Err(err) => return Err(err),
                        Ok(_) => {}
                    }
                }
                link.exchange(RequestId(2), Command::ClusterStatus, deadline)
                    .await
            }
            .await;
            views.push((addr.to_owned(), view));
        }
        views
    }
}
