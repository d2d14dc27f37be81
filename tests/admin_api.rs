//! The admin HTTP API (`/_synapse/admin`, Synapse's paths and bodies): for
//! server admins only.

mod common;

use common::{assert_error, TestServer};

#[tokio::test]
async fn only_admins_may_call_the_admin_api() {
    let server = TestServer::start().await;
    // The first account registered is the server's admin.
    let (_, admin, _) = server.register("admin", "pw").await;
    let (_, user, _) = server.register("user", "pw").await;
    let path = "/_synapse/admin/v1/server_version";
    let (status, body) = server.call("GET", path, Some(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server_version"], env!("CARGO_PKG_VERSION"));
    assert_error(&server.call("GET", path, Some(&user), None).await, 403, "M_FORBIDDEN");
    assert_error(&server.call("GET", path, None, None).await, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn the_health_check_answers_without_a_token() {
    let server = TestServer::start().await;
    let (status, body) = server.call("GET", "/_conduit/health", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
}
