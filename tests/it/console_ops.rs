//! The console's operations pages (#16): the exact request of a delivery,
//! delivery filters, retry-all matching a filter, and header edits by name.
//! Same browser-less client as `console.rs`.

use std::time::Duration;

use crate::support::{
    console::{create, secret_in, start_console, Client, Page, HEADER_VALUE},
    pick, publish, Behavior, Receiver,
};

/// GETs `path` until its body contains `what` (5 s at most).
async fn get_until(c: &Client, path: &str, what: &str) -> Page {
    let mut page = c.get(path).await;
    for _ in 0..50 {
        if page.body.contains(what) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page = c.get(path).await;
    }
    assert!(
        page.body.contains(what),
        "{path} never showed {what}: {}",
        page.body
    );
    page
}

#[tokio::test]
async fn delivery_page_shows_the_exact_request_without_header_values() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    let receiver = Receiver::start().await;
    let (id, page) = create(&c, &receiver.url, &[]).await;
    let _secret = secret_in(&page);
    let mut publisher = server.publisher().await;
    let offset = publish(&mut publisher, pick("console-req-1", "ORD-R1")).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    // Once the attempt is recorded, the page renders the request as sent.
    let page = get_until(
        &c,
        &format!("/endpoints/{id}/deliveries/{offset}"),
        "<table id=\"attempts\">",
    )
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let sig = got[0].header("webhook-signature").unwrap();
    let ts = got[0].header("webhook-timestamp").unwrap();
    let wid = got[0].header("webhook-id").unwrap();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert!(page.body.contains(name), "{name}: {}", page.body);
    }
    // The page renders what the receiver verified: same timestamp, same
    // signature (signed with the same secret), same body.
    assert!(page.body.contains(sig), "signature {sig}: {}", page.body);
    assert!(
        page.body.contains(&format!("{wid}.{ts}.")),
        "signed content"
    );
    assert!(page.body.contains("id=\"signed-content\""));
    let body = got[0].body_text();
    let escaped = body.replace('&', "&amp;").replace('"', "&#34;");
    assert!(
        page.body.contains(&escaped) || page.body.contains(&body.replace('"', "&quot;")),
        "the body as sent: {body}\n{}",
        page.body
    );
    assert!(page.body.contains("X-Api-Key") || page.body.contains("x-api-key"));
    assert!(!page.body.contains(HEADER_VALUE), "a custom header value");
    assert!(page.body.contains("&lt;redacted&gt;"), "{}", page.body);
    server.stop().await;
}

#[tokio::test]
async fn filters_narrow_the_list_and_retry_all_dry_runs_then_requeues() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    let receiver = Receiver::start().await;
    receiver.set_default(Behavior::Status(500));
    // Every event type, one attempt: each delivery dies at once.
    let (id, _) = create(
        &c,
        &receiver.url,
        &[
            ("event_types", "inventory.updated"),
            ("retry_schedule", "0s"),
        ],
    )
    .await;
    let mut publisher = server.publisher().await;
    for i in 0..3 {
        publish(
            &mut publisher,
            pick(&format!("ops-pick-{i}"), &format!("ORD-O{i}")),
        )
        .await;
    }
    publish(
        &mut publisher,
        crate::support::inventory("ops-inv-1", "SKU-1", 3.0),
    )
    .await;
    receiver.wait_for(4, Duration::from_secs(10)).await;
    let detail = format!("/endpoints/{id}");
    let all = get_until(&c, &format!("{detail}?state=dead"), "ops-inv-1").await;
    for i in 0..3 {
        assert!(all.body.contains(&format!("ops-pick-{i}")), "{}", all.body);
    }
    // Event type narrows, and the filter is kept in the retry-all form.
    let page = c
        .get(&format!("{detail}?state=dead&event_type=inventory.updated"))
        .await;
    assert!(page.body.contains("ops-inv-1"), "{}", page.body);
    assert!(!page.body.contains("ops-pick-0"), "{}", page.body);
    // Event id narrows to one.
    let page = c.get(&format!("{detail}?event_id=ops-pick-1")).await;
    assert!(page.body.contains("ops-pick-1"), "{}", page.body);
    assert!(!page.body.contains("ops-pick-0") && !page.body.contains("ops-inv-1"));
    // A time range in the future matches nothing; a bad time names the field.
    let page = c.get(&format!("{detail}?since=2999-01-01T00:00:00Z")).await;
    assert!(page.body.contains("No deliveries"), "{}", page.body);
    let page = c.get(&format!("{detail}?until=yesterday")).await;
    assert!(page.body.contains("until: "), "{}", page.body);

    // Retry all dead pick deliveries: the dry run counts and changes nothing.
    receiver.set_default(Behavior::Status(200));
    let before = receiver.count();
    let csrf = all.csrf();
    let form = [
        ("csrf", csrf.as_str()),
        ("state", "dead"),
        ("event_type", "pick.confirmed"),
        ("since", ""),
        ("until", ""),
    ];
    let mut dry = form.to_vec();
    dry.push(("op", "recover-count"));
    let page = c.post(&format!("{detail}/action"), &dry).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("3 dead/failed deliveries match"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("id=\"recover-confirm\""),
        "{}",
        page.body
    );
    receiver
        .expect_no_more_than(before, Duration::from_millis(500))
        .await;
    let dead = c.get(&format!("{detail}?state=dead")).await;
    assert!(
        dead.body.contains("ops-pick-2"),
        "still dead: {}",
        dead.body
    );
    // Confirming requeues them; the receiver gets the three picks, not the
    // inventory event.
    let mut confirm = form.to_vec();
    confirm.push(("op", "recover"));
    let page = c.post(&format!("{detail}/action"), &confirm).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("requeued 3 of 3"), "{}", page.body);
    let got = receiver.wait_for(before + 3, Duration::from_secs(10)).await;
    let mut ids: Vec<String> = got[before..]
        .iter()
        .map(|r| r.json()["salesOrderId"].as_str().unwrap_or("?").to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ORD-O0", "ORD-O1", "ORD-O2"], "{got:?}");
    receiver
        .expect_no_more_than(before + 3, Duration::from_millis(500))
        .await;
    let page = get_until(&c, &format!("{detail}?state=delivered"), "ops-pick-2").await;
    assert!(!page.body.contains("ops-inv-1"), "{}", page.body);
    server.stop().await;
}

#[tokio::test]
async fn editing_one_header_keeps_the_others_real_value() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    let receiver = Receiver::start().await;
    let (id, _) = create(&c, &receiver.url, &[]).await;
    let edit = format!("/endpoints/{id}/edit");
    // Add a second header, X-Api-Key's box left blank (never re-typed).
    let csrf = c.get(&edit).await.csrf();
    let base = |csrf: &str| {
        vec![
            ("csrf".to_owned(), csrf.to_owned()),
            ("url".to_owned(), receiver.url.clone()),
            ("event_types".to_owned(), "pick.confirmed".to_owned()),
            ("ordering".to_owned(), "key".to_owned()),
        ]
    };
    let post = |form: Vec<(String, String)>| {
        let edit = edit.clone();
        let c = &c;
        async move {
            let pairs: Vec<(&str, &str)> =
                form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            c.post(&edit, &pairs).await
        }
    };
    let mut form = base(&csrf);
    for (k, v) in [
        ("header_name", "X-Api-Key"),
        ("header_value", ""),
        ("header_name", "X-Tenant"),
        ("header_value", "tenant-1"),
    ] {
        form.push((k.into(), v.into()));
    }
    let page = post(form).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let mut publisher = server.publisher().await;
    publish(&mut publisher, pick("ops-hdr-1", "ORD-H1")).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].header("x-api-key"),
        Some(HEADER_VALUE),
        "kept, untyped"
    );
    assert_eq!(got[0].header("x-tenant"), Some("tenant-1"));

    // Change X-Tenant's value and remove nothing else: X-Api-Key still real.
    let page = c.get(&edit).await;
    assert!(!page.body.contains(HEADER_VALUE) && !page.body.contains("tenant-1"));
    let mut form = base(&page.csrf());
    for (k, v) in [
        ("header_name", "X-Api-Key"),
        ("header_value", ""),
        ("header_name", "X-Tenant"),
        ("header_value", "tenant-2"),
    ] {
        form.push((k.into(), v.into()));
    }
    assert_eq!(post(form).await.status, 303);
    publish(&mut publisher, pick("ops-hdr-2", "ORD-H2")).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("x-api-key"), Some(HEADER_VALUE));
    assert_eq!(got[1].header("x-tenant"), Some("tenant-2"));

    // Remove X-Tenant with its checkbox: X-Api-Key still sent, X-Tenant not.
    let csrf = c.get(&edit).await.csrf();
    let mut form = base(&csrf);
    for (k, v) in [
        ("header_name", "X-Api-Key"),
        ("header_value", ""),
        ("header_name", "X-Tenant"),
        ("header_value", ""),
        ("header_remove", "X-Tenant"),
    ] {
        form.push((k.into(), v.into()));
    }
    assert_eq!(post(form).await.status, 303);
    publish(&mut publisher, pick("ops-hdr-3", "ORD-H3")).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got[2].header("x-api-key"), Some(HEADER_VALUE));
    assert_eq!(got[2].header("x-tenant"), None);
    server.stop().await;
}

#[tokio::test]
async fn replay_counts_first_without_confirmation_and_changes_nothing() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    let receiver = Receiver::start().await;
    let (id, _) = create(&c, &receiver.url, &[]).await;
    let mut publisher = server.publisher().await;
    let first = publish(&mut publisher, pick("rc-1", "O1")).await;
    publish(&mut publisher, pick("rc-2", "O2")).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    let csrf = c.get(&format!("/endpoints/{id}")).await.csrf();
    let from = first.to_string();
    let page = c
        .post(
            &format!("/endpoints/{id}/action"),
            &[("csrf", &csrf), ("op", "replay-count"), ("from", &from)],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!(
            "a replay from offset {first} would send 2 events again"
        )),
        "{}",
        page.body
    );
    // Nothing was sent again: the next request is a marker published now.
    publish(&mut publisher, pick("rc-marker", "O3")).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got[2].header("webhook-id"), Some("rc-marker"), "{got:?}");
    server.stop().await;
}
