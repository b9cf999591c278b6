//! The console's overview statistics and event catalog (#16), without a
//! browser: the real broker and console, a real receiver.

use std::time::Duration;

use stevedore::pb;

use crate::support::{
    console::{create, start_console, Client},
    pick, publish, Behavior, Receiver,
};

/// The overview row of endpoint `id` (from its link to the next row).
fn row<'a>(body: &'a str, id: &str) -> &'a str {
    let at = body
        .find(&format!("<a href=\"/endpoints/{id}\">"))
        .unwrap_or_else(|| panic!("no row for {id}: {body}"));
    let rest = &body[at..];
    &rest[..rest.find("</tr>").unwrap_or(rest.len())]
}

#[tokio::test]
async fn overview_shows_dead_count_success_rate_and_chart() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    let receiver = Receiver::start().await;
    // The first request fails, every later one succeeds.
    receiver.respond(Behavior::Status(500));
    let (id, _) = create(&c, &receiver.url, &[("retry_schedule", "0s")]).await;

    // Before any attempt: nothing dead, no attempts, an empty chart.
    let page = c.get("/").await;
    let r = row(&page.body, &id);
    assert!(r.contains("<td class=\"num dead\">0</td>"), "{r}");
    assert!(r.contains("no attempts"), "{r}");
    assert!(r.contains("<svg class=\"chart\""), "{r}");
    assert!(!r.contains("fill=\"#d64545\""), "{r}");

    let mut publisher = server.publisher().await;
    publish(&mut publisher, pick("pages-fail-1", "ORD-P1")).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    publish(&mut publisher, pick("pages-ok-2", "ORD-P2")).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;

    // The stats are recorded when an attempt ends: poll, bounded (10 s, for
    // a loaded machine).
    let mut page = c.get("/").await;
    for _ in 0..100 {
        let r = row(&page.body, &id);
        if r.contains("50.0% of 2 attempts") && r.contains("state=dead\">1</a>") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page = c.get("/").await;
    }
    let r = row(&page.body, &id);
    assert!(r.contains("50.0% of 2 attempts"), "{r}");
    assert!(
        r.contains(&format!("<a href=\"/endpoints/{id}?state=dead\">1</a>")),
        "{r}"
    );
    assert!(r.contains("p50 "), "{r}");
    assert!(r.contains("p95 "), "{r}");
    // The chart has a bar for this minute's success and one for its failure
    // (or two minutes' bars, when the attempts straddled a minute).
    let svg = &r[r.find("<svg class=\"chart\"").unwrap()..];
    let svg = &svg[..svg.find("</svg>").expect("a closed svg") + 6];
    assert!(svg.contains("1 ok, 1 failed"), "{svg}");
    assert!(svg.contains("<polyline class=\"latency\""), "{svg}");
    assert!(svg.contains("fill=\"#3b9b5a\""), "{svg}");
    assert!(svg.contains("fill=\"#d64545\""), "{svg}");
    // CSP: no inline style or script anywhere on the page.
    assert!(!page.body.contains("style="), "{}", page.body);
    assert!(!page.body.contains("<script>"), "{}", page.body);
    server.stop().await;
}

#[tokio::test]
async fn catalog_shows_every_type_with_description_and_schema() {
    let server = start_console(&[], |_| {}).await;
    let mut c = Client::new(&server).await;
    c.login_once(&server).await;
    let types = server
        .admin_as(None)
        .await
        .list_event_types(pb::ListEventTypesRequest {})
        .await
        .unwrap()
        .into_inner()
        .event_types;
    assert!(!types.is_empty());
    let page = c.get("/catalog").await;
    assert_eq!(page.status, 200);
    for t in &types {
        let at = page
            .body
            .find(&format!("<section class=\"event-type\" id=\"{}\">", t.name))
            .unwrap_or_else(|| panic!("no section for {}: {}", t.name, page.body));
        let section = &page.body[at..];
        let section = &section[..section.find("</section>").unwrap()];
        assert!(
            section.contains("<details class=\"schema\"><summary>JSON Schema</summary>"),
            "{section}"
        );
        // The schema as the RPC gives it, pretty-printed (HTML-escaped).
        let schema: serde_json::Value = serde_json::from_str(&t.json_schema).unwrap();
        let text = unescape(section);
        assert!(
            text.contains(&serde_json::to_string_pretty(&schema).unwrap()),
            "{} schema not shown: {section}",
            t.name
        );
        assert!(text.contains(&t.description), "{section}");
        if !t.broker_event {
            assert!(section.contains("<pre class=\"sample\">"), "{section}");
            assert!(section.contains("class=\"playground\""), "{section}");
        }
    }
    // The playground still runs on a type's sample.
    let page = c
        .get("/catalog?type=pick.confirmed&filter=&fields=salesOrderId")
        .await;
    assert!(
        page.body.contains("the filter selects this event"),
        "{}",
        page.body
    );
    // And on a real event, by offset; one of another type is refused.
    let mut publisher = server.publisher().await;
    let real = publish(&mut publisher, pick("catalog-real", "REAL-ORDER-77")).await;
    let page = c
        .get(&format!(
            "/catalog?type=pick.confirmed&filter=&fields=salesOrderId&offset={real}"
        ))
        .await;
    assert!(page.body.contains("REAL-ORDER-77"), "{}", page.body);
    let page = c
        .get(&format!("/catalog?type=inventory.updated&offset={real}"))
        .await;
    assert!(
        page.body
            .contains("is a pick.confirmed, not a inventory.updated"),
        "{}",
        page.body
    );
    server.stop().await;
}

/// HTML text with askama's escapes undone.
fn unescape(html: &str) -> String {
    html.replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}
