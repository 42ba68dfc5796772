//! `lockctl cluster status | add-node | remove-node`.

use std::process::ExitCode;

use lockctl::cli::ClusterAction;
use lockctl::ClusterStatusOk;

use crate::common::{aligned, builder, connect, fail, Server};

pub(crate) async fn run(server: &Server, action: ClusterAction) -> ExitCode {
    match action {
        ClusterAction::Status => status(server).await,
        ClusterAction::AddNode {
            node_id,
            client,
            peer,
        } => {
            let leader = match connect(server).await {
                Ok(leader) => leader,
                Err(code) => return code,
            };
            println!("Adding node {node_id} ({client}, peer {peer}): catching up as a learner...");
            report(leader.add_node(node_id, &client, &peer).await, || {
                format!("Node {node_id} is a voter.")
            })
        }
        ClusterAction::RemoveNode { node_id } => {
            let leader = match connect(server).await {
                Ok(leader) => leader,
                Err(code) => return code,
            };
            report(leader.remove_node(node_id).await, || {
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

/// Asks every node; prints the first answer's view of the members and each node's own line.
async fn status(server: &Server) -> ExitCode {
    let views = builder(server).cluster_status_of_each().await;
    let mut nodes = vec![[
        "ADDRESS".to_owned(),
        "NODE".to_owned(),
        "ROLE".to_owned(),
        "TERM".to_owned(),
        "LEADER".to_owned(),
        "LAST LOG".to_owned(),
        "APPLIED".to_owned(),
    ]];
    let mut members: Option<ClusterStatusOk> = None;
    for (addr, view) in &views {
        match view {
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
            Err(err) => nodes.push([
                addr.clone(),
                "-".into(),
                format!("unreachable: {err}"),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    print!("{}", aligned(&nodes));
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

fn dash(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}
