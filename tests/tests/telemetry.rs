//! Client telemetry (PROTOCOL.md, "Client telemetry"): a service's reports, published
//! by the SDK's `Telemetry`, become the broker's demand series per (service, message
//! type) with a forecast; a record on the telemetry topic that is not a report is
//! skipped without stopping the reading.

use std::time::{Duration, Instant};

use weir_client::{LoadHistoryResponse, Producer, ProducerRecord, Telemetry};
use weir_protocol::messages::LoadHistoryRequest;
use weir_protocol::ResponseBody;
use weir_tests::over_both_transports;
use weir_tests::transport::SdkBroker;

async fn load_history(c: &weir_client::Client) -> LoadHistoryResponse {
    let req = LoadHistoryRequest {
        topic: String::new(),
        resolution_s: 1,
        max_samples: 0,
    };
    match c.call(req).await.expect("load history") {
        ResponseBody::LoadHistory(r) => r,
        other => panic!("unexpected {:?}", other.api_key()),
    }
}

over_both_transports! {
    async fn a_services_reports_become_its_demand_series(t) {
        let broker = SdkBroker::start(t).await;
        let c = broker.client().await;
        let telemetry = Telemetry::start(&c, "checkout", Duration::from_millis(200))
            .await
            .expect("telemetry");
        // Something that is not a report, before the reports: skipped.
        let p = Producer::builder(&c).build().await.expect("producer");
        p.send(ProducerRecord::new("__weir_telemetry", "not json").key("checkout"))
            .await
            .expect("queued")
            .await
            .expect("stored");
        telemetry.expect("order.created", 600.0);
        telemetry.set_load(0.42);
        let started = Instant::now();
        let found = loop {
            // About 5,000 order.created per second, and a trickle of refunds.
            for _ in 0..10 {
                telemetry.count("order.created", 50);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            telemetry.count("refund.issued", 1);
            let h = load_history(&c).await;
            let d = h
                .demands
                .iter()
                .find(|d| d.service == "checkout" && d.message_type == "order.created")
                .cloned();
            if let Some(d) = d.filter(|d| d.samples.len() >= 3) {
                assert!(
                    h.demands.iter().any(|d| d.message_type == "refund.issued"),
                    "every type reported has a series: {:?}",
                    h.demands
                );
                break d;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no demand series after 30 s: {:?}",
                h.demands
            );
        };
        telemetry.shutdown().await;
        assert_eq!(found.expected_per_s, 600);
        assert_eq!(found.load_permille, 420);
        assert!(found.reported_at_s > 1_700_000_000, "{}", found.reported_at_s);
        let rates: Vec<u64> = found.samples.iter().map(|s| s.records_per_s).collect();
        let newest = *rates.last().unwrap();
        // 50 records every ≥10 ms: at most 5,000/s; the sleeps make it less, not zero.
        assert!((500..=6_000).contains(&newest), "{rates:?}");
        assert!(found.forecast.horizon_s == 60 && !found.forecast.model.is_empty());
        // Demand is per service: a topic's history has none.
        let req = LoadHistoryRequest {
            topic: "__weir_telemetry".into(),
            resolution_s: 1,
            max_samples: 1,
        };
        match c.call(req).await.expect("topic history") {
            ResponseBody::LoadHistory(r) => assert!(r.demands.is_empty()),
            other => panic!("unexpected {:?}", other.api_key()),
        }
    }
}

over_both_transports! {
    /// Records that name their message type in a header are counted per type into the
    /// service's telemetry as the producer sends them (`ProducerBuilder::count_types`):
    /// the broker's demand series shows each type named, with a rate, and records
    /// without the header are not counted.
    async fn records_naming_their_type_in_a_header_are_counted_per_type(t) {
        let broker = SdkBroker::start(t).await;
        let c = broker.client().await;
        weir_client::Admin::new(c.clone())
            .create_topic("orders", 1, Default::default())
            .await
            .expect("topic");
        let telemetry = Telemetry::start(&c, "shop", Duration::from_millis(200))
            .await
            .expect("telemetry");
        let p = Producer::builder(&c)
            .count_types(&telemetry, "type")
            .build()
            .await
            .expect("producer");
        let started = Instant::now();
        let found = loop {
            for i in 0..20 {
                let kind = if i % 4 == 0 { "refund" } else { "order" };
                p.send(ProducerRecord::new("orders", "x").header("type", kind))
                    .await
                    .expect("queued");
                p.send(ProducerRecord::new("orders", "untyped")).await.expect("queued");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let h = load_history(&c).await;
            let mine: Vec<_> = h.demands.into_iter().filter(|d| d.service == "shop").collect();
            let rate = |t: &str| {
                mine.iter()
                    .find(|d| d.message_type == t)
                    .and_then(|d| d.samples.last())
                    .map_or(0, |s| s.records_per_s)
            };
            if rate("order") > 0 && rate("refund") > 0 {
                break mine;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no per-type demand: {mine:?}");
        };
        let types: Vec<&str> = found.iter().map(|d| d.message_type.as_str()).collect();
        assert_eq!(types, ["order", "refund"], "only types named in the header");
        p.flush().await.expect("flush");
        telemetry.shutdown().await;
    }
}
