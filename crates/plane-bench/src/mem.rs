//! The in-memory reference backend: plane only (there is no raw client).

use plane::events::StreamConfig;

use crate::drive::{self, Pair, Params};
use crate::plane_ops;
use crate::report::Row;
use crate::{step, Result};

/// Run every scenario on `mem://`.
pub async fn run(rows: &mut Vec<Row>, p: &Params) -> Result<()> {
    let registry = plane::registry();
    let url = "mem://bench";
    let requests = registry.requests(url).await?;
    let _servers = plane_ops::serve(&requests).await?;
    let unary = Pair {
        plane: plane_ops::plane_unary(&requests),
        raw: None,
    };
    step(
        rows,
        "mem unary_latency",
        drive::unary_latency("mem", &unary, p),
    )
    .await?;
    step(
        rows,
        "mem unary_throughput",
        drive::unary_throughput("mem", &unary, p),
    )
    .await?;
    step(
        rows,
        "mem unary_allocs",
        drive::unary_allocs("mem", "unary_latency", &unary, p),
    )
    .await?;
    let awaiting = Pair {
        plane: plane_ops::plane_unary_await(&requests),
        raw: None,
    };
    step(
        rows,
        "mem unary_await",
        drive::unary_await("mem", &awaiting, p),
    )
    .await?;
    let streamed = Pair {
        plane: plane_ops::plane_streamed(&requests),
        raw: None,
    };
    step(
        rows,
        "mem stream_throughput",
        drive::stream_throughput("mem", &streamed, p),
    )
    .await?;

    let events = registry.events(url).await?;
    let pubsub = Pair {
        plane: plane_ops::plane_pubsub(&events, "mem"),
        raw: None,
    };
    step(
        rows,
        "mem pubsub_throughput",
        drive::pubsub_throughput("mem", &pubsub, p),
    )
    .await?;
    events
        .create_stream(StreamConfig::new("bench-mem", ["bench.durable.mem"]))
        .await?;
    let durable = Pair {
        plane: plane_ops::plane_durable(&events, "bench.durable.mem"),
        raw: None,
    };
    step(
        rows,
        "mem durable_publish",
        drive::durable_publish("mem", &durable, p),
    )
    .await?;
    events.delete_stream("bench-mem").await?;

    let objects = registry.objects(url).await?;
    let bucket = objects.create_bucket("bench").await?;
    let pair = Pair {
        plane: plane_ops::plane_objects(&bucket),
        raw: None,
    };
    step(
        rows,
        "mem object_put_get",
        drive::object_put_get("mem", &pair, p),
    )
    .await?;
    objects.delete_bucket("bench").await?;
    Ok(())
}
