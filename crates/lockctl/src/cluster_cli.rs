//! `lockctl cluster status | add-node | remove-node`.

use std::process::ExitCode;

use std::collections::HashSet;

use lockctl::cli::ClusterAction;
use lockctl::{ClientError, ClusterStatusOk, ErrorCode};

use crate::common::{admin_token, aligned, builder, connect, fail, Server};

pub(crate) async fn run(server: &Server, action: ClusterAction) -> ExitCode {
    match action {
        ClusterAction::Status => status(server).await,
        ClusterAction::AddNode {
            node_id,
            client,
            peer,
            admin,
        } => {
            let token = match admin_token(&admin, "membership changes") {
                Ok(token) => token,
                Err(code) => return code,
            };
            let leader = match connect(server).await {
                Ok(leader) => leader,
                Err(code) => return code,
            };
            println!("Adding node {node_id} ({client}, peer {peer}): catching up as a learner...");
            report(
                leader.add_node(node_id, &client, &peer, &token).await,
                || format!("Node {node_id} is a voter."),
            )
        }
        ClusterAction::RemoveNode { node_id, admin } => {
            let token = match admin_token(&admin, "membership changes") {
                Ok(token) => token,
                Err(code) => return code,
            };
            let leader = match connect(server).await {
                Ok(leader) => leader,
                Err(code) => return code,
            };
            report(leader.remove_node(node_id, &token).await, || {
                format!("Node {node_id} is no longer a member.")
            })
        }
    }
}

fn report(outcome: Result<(), lockctl::ClientError>, done: impl Fn() -> String) -> ExitCode {
    match outcome {
        Ok(()) => {
            println!("{}", done());
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err.to_string()),
    }
}

/// Asks every node it learns of; prints each node's own line, then the errors of those that did
/// not answer (one line each, so the table stays narrow), then the members as the leader (or
/// else the first node that answered) sees them.
async fn status(server: &Server) -> ExitCode {
    let views = builder(server).cluster_status_of_each().await;
    if !views.is_empty() && views.iter().all(|(_, view)| is_single_server(view)) {
        println!(
            "lockd at {} is a single server, not a cluster: it has no cluster status \
             (`lockctl status` shows its locks).",
            server.addr()
        );
        return ExitCode::SUCCESS;
    }
    let mut nodes = vec![[
        "ADDRESS".to_owned(),
        "NODE".to_owned(),
        "ROLE".to_owned(),
        "TERM".to_owned(),
        "LEADER".to_owned(),
        "LAST LOG".to_owned(),
        "APPLIED".to_owned(),
    ]];
    let mut errors = Vec::new();
    let mut members: Option<ClusterStatusOk> = None;
    let mut shown = HashSet::new();
    for (addr, view) in &views {
        match view {
            // The same node under another address (a name, then its IP from the members).
            Ok(view) if !shown.insert(view.node_id) => {}
            Ok(view) => {
                nodes.push([
                    addr.clone(),
                    view.node_id.to_string(),
                    view.role.clone(),
                    view.term.to_string(),
                    dash(view.leader),
                    dash(view.last_log_index),
                    dash(view.last_applied),
                ]);
                // The leader's view knows how far each member is.
                if members.is_none() || view.role == "leader" {
                    members = Some(view.clone());
                }
            }
            Err(err) => {
                let role = match err {
                    ClientError::NoReply { .. } => "no answer",
                    _ => "unreachable",
                };
                nodes.push([
                    addr.clone(),
                    "-".into(),
                    role.to_owned(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
                errors.push(format!("{addr}: {err}"));
            }
        }
    }
    print!("{}", aligned(&nodes));
    for error in &errors {
        println!("{error}");
    }
    let Some(view) = members else {
        return fail("no node answered");
    };
    let mut rows = vec![[
        "MEMBER".to_owned(),
        "CLIENT".to_owned(),
        "PEER".to_owned(),
        "VOTER".to_owned(),
        "MATCHED".to_owned(),
    ]];
    for member in &view.members {
        rows.push([
            member.node_id.to_string(),
            member.client.clone(),
            member.peer.clone(),
            if member.voter { "yes" } else { "learner" }.to_owned(),
            dash(member.matched),
        ]);
    }
    println!();
    print!("{}", aligned(&rows));
    ExitCode::SUCCESS
}

/// Whether a node answered that it is a single server, which has no cluster to show.
fn is_single_server(view: &Result<ClusterStatusOk, ClientError>) -> bool {
    // lockd's `NotACluster` refusal (crates/lockd/src/apply.rs); its wording is pinned by
    // the test `cluster_status_of_a_single_server_says_so_plainly`.
    matches!(view, Err(ClientError::Server(body))
        if body.code == ErrorCode::BadRequest && body.message.contains("single server"))
}

fn dash(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}
