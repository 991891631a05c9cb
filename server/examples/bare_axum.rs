//! The benchmark baseline for kvnode's single-node GET: a bare axum handler
//! that returns 100 static bytes, on the same runtime setup as kvnode.
//!
//! ```text
//! cargo run --release -p strata-server --example bare_axum -- 127.0.0.1:7800
//! wrk -t2 -c64 -d10s --latency http://127.0.0.1:7800/v1/kv/bench
//! ```

use axum::routing::get;
use axum::Router;

static BODY: [u8; 100] = [b'x'; 100];

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7800".to_owned());
    let app = Router::new().route("/v1/kv/{*key}", get(|| async { &BODY[..] }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
