//! `lockctl cluster status | add-node | remove-node`.

use std::process::ExitCode;

use lockctl::cli::{AdminCredential, ClusterAction};
use lockctl::ClusterStatusOk;

use crate::common::{aligned, builder, connect, fail, Server};

pub(crate) async fn run(server: &Server, action: ClusterAction) -> ExitCode {
    match action {
        ClusterAction::Status => status(server).await,
        ClusterAction::AddNode {
            node_id,
            client,
            peer,
            admin,
        } => {
            let token = match admin_token(&admin) {
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
            let token = match admin_token(&admin) {
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

/// The admin credential from --admin-token-file, else $LOCKD_ADMIN_TOKEN; without one, a
/// usage error (exit 2): the cluster would refuse the change anyway.
fn admin_token(admin: &AdminCredential) -> Result<String, ExitCode> {
    let token = match &admin.admin_token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|err| {
            usage_error(&format!(
                "cannot read --admin-token-file {}: {err}",
                path.display()
            ))
        })?,
        None => std::env::var("LOCKD_ADMIN_TOKEN").unwrap_or_default(),
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(usage_error(
            "membership changes need the cluster's admin credential (the nodes' \
             --admin-token-file): give it with --admin-token-file FILE or LOCKD_ADMIN_TOKEN",
        ));
    }
    Ok(token.to_owned())
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

/// A usage error: the one-line message, and exit code 2 as for a bad flag.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("lockctl: error: {message}");
    ExitCode::from(2)
}
