//! Cluster commands for operators: each node's view of the cluster, and membership changes.

use std::collections::{HashSet, VecDeque};

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
    /// log, then makes it a voter. Answers once it is a voter. `admin_token` is the secret of
    /// the nodes' `--admin-token-file`.
    pub async fn add_node(
        &self,
        node_id: u64,
        client: &str,
        peer: &str,
        admin_token: &str,
    ) -> Result<(), ClientError> {
        self.call_empty(Command::AddNode(AddNode {
            node_id,
            client: client.to_owned(),
            peer: peer.to_owned(),
            admin_token: Some(admin_token.to_owned()),
        }))
        .await
    }

    /// `remove_node`: the leader takes the node out of the cluster. `admin_token` as for
    /// [`add_node`](Self::add_node).
    pub async fn remove_node(&self, node_id: u64, admin_token: &str) -> Result<(), ClientError> {
        self.call_empty(Command::RemoveNode(RemoveNode {
            node_id,
            admin_token: Some(admin_token.to_owned()),
        }))
        .await
    }

    /// `cluster_status`: the cluster as the connected node sees it.
    pub async fn cluster_status(&self) -> Result<ClusterStatusOk, ClientError> {
        self.call(Command::ClusterStatus).await
    }
}

impl ClientBuilder {
    /// Asks every address given, and every member those nodes list (a node added later, or
    /// left out of the addresses), for its view of the cluster, without opening a session: this
    /// works while no leader is elected, which is when it matters. Each address is asked once,
    /// in the order given, then in the order learned.
    pub async fn cluster_status_of_each(
        &self,
    ) -> Vec<(String, Result<ClusterStatusOk, ClientError>)> {
        let (addrs, _, _) = self.target();
        let mut to_ask: VecDeque<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        let mut asked = HashSet::new();
        let mut views = Vec::new();
        while let Some(addr) = to_ask.pop_front() {
            if !asked.insert(addr.clone()) {
                continue;
            }
            let view = self.cluster_status_of(&addr).await;
            if let Ok(view) = &view {
                to_ask.extend(view.members.iter().map(|member| member.client.clone()));
            }
            views.push((addr, view));
        }
        views
    }

    /// One node's view of the cluster.
    async fn cluster_status_of(&self, addr: &str) -> Result<ClusterStatusOk, ClientError> {
        let (_, tls, auth) = self.target();
        // A paused node must not hang the whole command.
        let timeouts = self.timeouts();
        let patience = STATUS_PATIENCE.min(timeouts.reply);
        let deadline = Some(tokio::time::Instant::now() + patience);
        let mut link = dial(addr, tls, timeouts.connect).await?;
        if let Some(secret) = auth {
            // Authenticates the connection; a follower then says `not_leader`, which is fine:
            // `cluster_status` is answered by every node.
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
}
