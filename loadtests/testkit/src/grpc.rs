//! The standard gRPC health check, as a load balancer asks it.

use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Asks the health service on `channel` (whole server) and asserts that it
/// answers SERVING within `timeout`.
pub async fn healthy(channel: Channel, timeout: Duration) {
    let reply = tokio::time::timeout(
        timeout,
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health answer in time")
    .unwrap()
    .into_inner();
    assert_eq!(reply.status, 1, "SERVING");
}
