//! The console's operations pages (#16): the exact request of a delivery,
//! delivery filters, retry-all matching a filter, and header edits by name.
//! Same browser-less client as `console.rs`.

use std::time::Duration;

use stevedore::pb;

use crate::{
    console::{create, secret_in, start_console, Client, Page, HEADER_VALUE},
    pick, publish,
    receiver::{Behavior, Receiver},
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
    assert!(page.body.contains(what), "{path} never showed {what}: {}", page.body);
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
    get_until(&c, &format!("/endpoints/{id}"), "delivered").await;
    let page = c.get(&format!("/endpoints/{id}/deliveries/{offset}")).await;
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
    assert!(page.body.contains(&format!("{wid}.{ts}.")), "signed content");
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
