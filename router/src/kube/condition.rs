//! This node's `NetworkUnavailable` condition: set to False (reason `WeftIsUp`) once the
//! router is ready, as Weave and Calico do, so whatever waits on the condition (cloud route
//! controllers set it True until a network plugin clears it) knows pods can be networked.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node as KubeNode;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use tracing::{info, warn};

use super::health::KubeHealth;
use crate::status::StatusReader;

/// The condition's reason, as `kubectl describe node` shows it.
pub const REASON: &str = "WeftIsUp";

/// The strategic merge patch that sets the condition (conditions merge by `type`, so the
/// kubelet's own conditions stay).
pub fn patch(now: &str) -> serde_json::Value {
    serde_json::json!({
        "status": {
            "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": REASON,
                "message": "weft is running on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]
        }
    })
}

/// Waits until the router is ready, then sets the condition on Node `node`, retrying with
/// back-off (up to a minute apart) until the API takes it or the router stops.
pub async fn set_when_ready(
    client: kube::Client,
    node: String,
    mut status: StatusReader,
    health: KubeHealth,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::select! {
        ready = status.wait_ready() => if !ready { return },
        _ = shutdown.wait_for(|s| *s) => return,
    }
    let api: Api<KubeNode> = Api::all(client);
    let mut delay = Duration::from_secs(1);
    loop {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let params = PatchParams::default();
        match api
            .patch_status(&node, &params, &Patch::Strategic(patch(&now)))
            .await
        {
            Ok(_) => {
                info!(%node, "set the Node's NetworkUnavailable condition to False");
                health.node_condition(format!("NetworkUnavailable=False ({REASON})"));
                return;
            }
            Err(e) => {
                warn!(%node, "setting the Node's NetworkUnavailable condition: {e}; retrying");
                health.node_condition(format!("not set: {e}"));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(jittered(delay)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
}

/// `d` with up to half of it added at random, so routers that failed together retry apart.
fn jittered(d: Duration) -> Duration {
    d + d.mul_f64(rand::random::<f64>() / 2.0)
}
