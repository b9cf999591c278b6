//! Filter and projection tests: the documented examples against the real
//! sample bodies, every operator, precedence, error messages, and
//! properties (no panics, canonical text round-trips).

use serde_json::{json, Value};

use super::{
    ast::{Expr, Operand, Path, Segment},
    Filter, Projection, MAX_DEPTH, MAX_FIELDS, MAX_FILTER_BYTES,
};

fn golden(name: &str) -> Value {
    let text = match name {
        "pick_confirmed" => include_str!("../../tests/golden/pick_confirmed.json"),
        "shipment_closed" => include_str!("../../tests/golden/shipment_closed.json"),
        "channel_inventory" => include_str!("../../tests/golden/channel_inventory.json"),
        // No golden file for this one: the doc's example body, which
        // `webhook::golden` checks against the code.
        "inventory_updated" => {
            let doc = include_str!("../../docs/webhook-json.md");
            let marker = "<!-- body of examples/inventory_updated.json -->\n```json\n";
            let start = doc.find(marker).expect("the doc has the example") + marker.len();
            let len = doc[start..].find("```").expect("the block ends");
            &doc[start..start + len]
        }
        _ => panic!("no sample {name}"),
    };
    serde_json::from_str(text).expect("the sample is JSON")
}

fn filter(src: &str) -> Filter {
    Filter::parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"))
}

fn holds(src: &str, body: &Value) -> bool {
    filter(src).matches(body)
}

fn error(src: &str) -> String {
    match Filter::parse(src) {
        Ok(f) => panic!("{src:?} parsed as {f}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts each `(filter, expected)` against `body`.
fn check(body: &Value, cases: &[(&str, bool)]) {
    for (src, want) in cases {
        assert_eq!(holds(src, body), *want, "{src}");
    }
}

#[test]
fn the_documented_examples_against_the_samples() {
    let pick = golden("pick_confirmed");
    check(
        &pick,
        &[
            (r#"status == "SHORT""#, false),
            (r#"status == "COMPLETE""#, true),
            (r#"!(status == "COMPLETE")"#, false),
            ("lines[*].quantityShort > 0", false),
            (
                r#"fulfillmentCenterId in ["FC-EAST-01", "FC-WEST-02"]"#,
                true,
            ),
            ("exists(lot)", false),
            ("exists(lines[*].lot)", true),
            ("exists(lines[1].lot)", false),
            (r#"lines[0].product == "DRESS-BLK-M-001""#, true),
            ("totalQty == 5.0 && totalLines >= 2", true),
            (
                r#"timestamp >= "2026-02-04" && timestamp < "2026-02-05""#,
                true,
            ),
        ],
    );
    let mut short = pick.clone();
    short["status"] = json!("SHORT");
    short["lines"][1]["quantityShort"] = json!(1);
    check(
        &short,
        &[
            (r#"status == "SHORT""#, true),
            ("lines[*].quantityShort > 0", true),
            ("lines[0].quantityShort > 0", false),
        ],
    );

    let inventory = golden("inventory_updated");
    check(
        &inventory,
        &[
            (
                r#"reason == "CYCLE_COUNT" && quantityAvailable < 10"#,
                false,
            ),
            (
                r#"reason == "CYCLE_COUNT" && quantityAvailable < 100"#,
                true,
            ),
            ("quantityChange < 0", true),
            ("exists(lot)", true),
            (
                r#"fulfillmentCenterId in ["FC-EAST-01", "FC-WEST-02"]"#,
                false,
            ),
        ],
    );
    check(&json!({"quantityShort": 2}), &[("quantityShort > 0", true)]);

    let shipment = golden("shipment_closed");
    check(
        &shipment,
        &[
            ("details[*].quantityShipped == 95", true),
            (r#"trackingStatus == "SHIPPED" and carrier == "UPS""#, true),
            ("weightShipment > 25 and weightShipment < 26", true),
            (
                r#"shipDate >= "2026-02-02" && shipDate < "2026-02-03""#,
                true,
            ),
            ("exists(details[*].serial01)", false),
        ],
    );

    let channel = golden("channel_inventory");
    check(
        &channel,
        &[
            ("channelVariant.channel.id == 21", true),
            ("channelVariant.channel.includeBackorderQuantity", true),
            ("channelVariant.channel.unpublishNoInventory", false),
            ("channelVariant.hash == null", true),
            ("exists(channelVariant.hash)", true),
            ("exists(channelVariant.nope)", false),
            ("inventory.available <= 0", false),
        ],
    );
}

#[test]
fn comparisons() {
    let body = json!({
        "n": 5, "f": 2.5, "big": u64::MAX, "neg": -3, "s": "b", "t": true, "z": null,
        "list": [1, "x"], "obj": {"k": 1, "j": [2]},
    });
    check(
        &body,
        &[
            ("n == 5", true),
            ("n == 5.0", true),
            ("n == 50e-1", true),
            ("n != 5", false),
            ("n != 6", true),
            ("n < 6 && n <= 5 && n > 4 && n >= 5", true),
            ("n < 5 || n > 5", false),
            ("f > 2 && f < 3", true),
            ("neg < 0 && neg > -4", true),
            ("big > n && big == 18446744073709551615", true),
            ("neg < big", true),
            ("-0 == 0", true),
            (
                r#"s == "b" && s > "a" && s < "ba" && s <= "b" && s >= "b""#,
                true,
            ),
            (r#"s < 1 || s > 1 || s <= 1 || s >= 1 || s == 1"#, false),
            (r#"s != 1"#, true),
            ("t == true && t != false && t != 1", true),
            ("t < true || t <= true", false),
            ("z == null && missing == null && missing == z", true),
            ("missing != null || missing < 1 || missing >= 0", false),
            (
                r#"list == [1.0, "x"] && list != [1] && list != ["x", 1]"#,
                true,
            ),
            (r#"obj.j == [2] && obj.j[0] == 2 && obj.k == 1"#, true),
            ("n == f || f == n", false),
            ("n > f && f < n", true),
            ("1 < 2", true),
        ],
    );
}

#[test]
fn in_and_not_in() {
    let body = json!({"s": "b", "n": 2, "lines": [{"c": "x"}, {"c": "y"}]});
    check(
        &body,
        &[
            (r#"s in ["a", "b"]"#, true),
            (r#"s in ["a"]"#, false),
            (r#"s not in ["a"]"#, true),
            (r#"s not in ["a", "b"]"#, false),
            ("n in [1, 2.0]", true),
            ("s in []", false),
            ("s not in []", true),
            ("missing in [null]", true),
            (r#"missing not in ["a"]"#, true),
            (r#"lines[*].c in ["y"]"#, true),
            // At least one line is not `x`.
            (r#"lines[*].c not in ["x"]"#, true),
            (r#"lines[*].c not in ["x", "y"]"#, false),
        ],
    );
}

#[test]
fn any_element_with_wildcards() {
    let body = json!({
        "lines": [{"q": 0, "tags": ["a"]}, {"q": 3, "tags": ["b", "c"]}, {"tags": []}],
        "empty": [],
        "obj": {"q": 1},
    });
    check(
        &body,
        &[
            ("lines[*].q > 2", true),
            ("lines[*].q > 3", false),
            // The third line has no `q`, which is `null`.
            ("lines[*].q == null", true),
            ("lines[*].q != 0", true),
            ("!(lines[*].q == 5)", true),
            (r#"lines[*].tags[*] == "c""#, true),
            (r#"lines[*].tags[1] == "c""#, true),
            (r#"lines[*].tags[*] == "d""#, false),
            // An empty, missing or non-array value has no elements.
            ("empty[*] == null || empty[*] != 1", false),
            ("missing[*] == null", false),
            ("obj[*] == 1", false),
            ("exists(empty[*])", false),
            ("exists(lines[*])", true),
            (
                "lines[1].q == 3 && lines[5].q == null && lines[5] == null",
                true,
            ),
            ("lines[*].q == lines[1].q", true),
            ("lines.q == null", true),
        ],
    );
}

#[test]
fn a_bare_operand_holds_only_when_true() {
    let body = json!({"t": true, "f": false, "one": 1, "s": "true", "z": null, "l": [false, true]});
    check(
        &body,
        &[
            ("t", true),
            ("f", false),
            ("one", false),
            ("s", false),
            ("z", false),
            ("missing", false),
            ("l[*]", true),
            ("l[0]", false),
            ("true", true),
            ("false || null || 1", false),
            ("!f && not missing", true),
        ],
    );
}

#[test]
fn precedence_not_then_and_then_or() {
    let parses_as = |src: &str, canonical: &str| assert_eq!(filter(src).to_string(), canonical);
    parses_as("a || b && c", "a || b && c");
    parses_as("(a || b) && c", "(a || b) && c");
    parses_as("a and b or c and d", "a && b || c && d");
    parses_as("!a && b", "!a && b");
    parses_as("not a or b", "!a || b");
    parses_as("!(a || b)", "!(a || b)");
    parses_as("not (x == 1)", "!(x == 1)");
    parses_as("!a.b[0]", "!a.b[0]");
    parses_as("!!a", "!!a");
    parses_as("((a))", "a");
    parses_as("a || (b || c)", "a || (b || c)");
    parses_as(
        r#"x==1&&y not in["a",2]||!exists(z)"#,
        r#"x == 1 && y not in ["a", 2] || !exists(z)"#,
    );
    assert!(matches!(filter("a || b && c").expr, Expr::Or(ref xs) if xs.len() == 2));

    let body = json!({"t": true, "f": false});
    check(
        &body,
        &[
            ("t || t && f", true),
            ("(t || t) && f", false),
            ("!t || t", true),
            ("!(t || t)", false),
            ("f && f || t", true),
            ("f and (f or t)", false),
        ],
    );
}

#[test]
fn paths_may_use_keywords_after_the_first_segment() {
    let body = json!({"a": {"in": 1, "null": 2}});
    check(&body, &[("a.in == 1 && a.null == 2", true)]);
    assert_eq!(
        filter("a.in == 1").expr,
        Expr::Compare {
            left: Operand::Path(Path(vec![
                Segment::Key("a".into()),
                Segment::Key("in".into())
            ])),
            op: super::ast::CmpOp::Eq,
            right: Operand::Literal(json!(1)),
        }
    );
}

#[test]
fn literals_are_json() {
    let body = json!({"s": "tab\t\"q\" é 😀 /", "n": -1.5e3});
    check(
        &body,
        &[
            (r#"s == "tab\t\"q\" \u00e9 \ud83d\ude00 \/""#, true),
            ("s == \"tab\\t\\\"q\\\" é 😀 /\"", true),
            ("n == -1500 && n == -15E2 && n == -1.5e+3", true),
        ],
    );
}

#[test]
fn error_messages_name_the_column_and_what_was_expected() {
    let cases = [
        ("status ==", "column 10: expected a value after `==`, found the end of the filter"),
        ("quantityShort == )", "column 18: expected a value after `==`, found `)`"),
        (r#"status = "SHORT""#, "column 8: unexpected `=`; did you mean `==`?"),
        ("a & b", "column 3: unexpected `&`; did you mean `&&`?"),
        ("a | b", "column 3: unexpected `|`; did you mean `||`?"),
        ("status == 'SHORT'", "column 11: strings are written in double quotes"),
        ("a == \"abc", "column 6: unterminated string"),
        (r#"a == "\q""#, "column 7: invalid escape in string"),
        (r#"a == "\ud800""#, "column 7: invalid `\\u` escape in string"),
        ("a == \"\u{1}\"", "column 7: control character in string; write it as an escape"),
        ("a == 01", "column 6: a number cannot have a leading zero"),
        ("a == 1.", "column 8: expected a digit after `.`"),
        ("a == 1e", "column 8: expected a digit in the exponent"),
        ("a == -x", "column 7: expected a digit after `-`"),
        ("a == 1e999", "column 6: number out of range"),
        ("\"é\" == x @", "column 10: unexpected character `@`"),
        ("(a == 1", "column 8: expected `)` to close the `(` at column 1, found the end of the filter"),
        ("a == 1)", "column 7: expected `&&`, `||` or the end of the filter, found `)`"),
        ("a b", "column 3: expected `&&`, `||` or the end of the filter, found `b`"),
        ("", "column 1: the filter is empty"),
        ("  ", "column 1: the filter is empty"),
        ("a &&", "column 5: expected a condition, found the end of the filter"),
        ("and == 1", "column 1: expected a condition, found `and`"),
        ("a == b == c", "column 8: `==` needs a path or a value on its left, not a condition"),
        (
            r#"!status == "COMPLETE""#,
            "column 9: `==` needs a path or a value on its left, not a condition; \
             to negate a comparison, write `!(a == b)`",
        ),
        (
            r#"not status in ["A"]"#,
            "column 12: `in` needs a path or a value on its left, not a condition; \
             to negate a comparison, write `!(a in b)`",
        ),
        ("!!a < 1", "column 5: `<` needs a path or a value on its left, not a condition; \
             to negate a comparison, write `!(a < b)`"),
        (
            "exists(a) not in [1]",
            "column 11: `not in` needs a path or a value on its left, not a condition",
        ),
        (r#"status in "SHORT""#, "column 11: expected a list `[…]` after `in`, found `\"SHORT\"`"),
        ("a not in 1", "column 10: expected a list `[…]` after `not in`, found `1`"),
        ("a in [1 2]", "column 9: expected `,` or `]` in the list, found `2`"),
        ("a in [1,", "column 9: expected a value (a string, number, `true`, `false`, `null` or list), found the end of the filter"),
        ("a in [b]", "column 7: expected a value (a string, number, `true`, `false`, `null` or list), found `b`"),
        ("exists a", "column 8: expected `(` after `exists`, found `a`"),
        ("exists(1)", "column 8: expected a path in `exists(…)`, found `1`"),
        ("exists(a", "column 9: expected `)` after the path, found the end of the filter"),
        ("lines.", "column 7: expected a field name after `.`, found the end of the filter"),
        ("lines[-1].q > 0", "column 7: an index is a non-negative integer"),
        ("lines[1.5].q > 0", "column 7: an index is a non-negative integer"),
        ("lines[q] > 0", "column 7: expected an index or `*` after `[`, found `q`"),
        ("lines[0 > 0", "column 9: expected `]`, found `>`"),
        ("a[*].q == b[*].q", "column 11: only one side of a comparison can use `[*]`"),
        (
            r#"a == "a very long string indeed, longer than shown" b"#,
            "column 53: expected `&&`, `||` or the end of the filter, found `b`",
        ),
        (
            r#"a == 1 "a very long string indeed, longer than shown""#,
            "column 8: expected `&&`, `||` or the end of the filter, \
             found `\"a very long string inde…`",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(error(src), want, "{src}");
    }
}

#[test]
fn size_and_depth_are_bounded() {
    let long = format!("a == \"{}\"", "x".repeat(MAX_FILTER_BYTES));
    assert_eq!(
        error(&long),
        "column 1: a filter is at most 4096 bytes long"
    );

    let nest = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
    filter(&nest(MAX_DEPTH));
    assert_eq!(
        error(&nest(MAX_DEPTH + 1)),
        "column 33: nested more than 32 levels deep (parentheses, `!` and lists)"
    );
    filter(&format!("{}a", "!".repeat(MAX_DEPTH)));
    assert!(error(&"!".repeat(4000)).contains("nested more than 32 levels"));
    assert!(error(&format!("a == {}", "[".repeat(2000))).contains("nested more than 32"));
    // Long flat chains are no nesting: they are fine up to the size cap.
    let chain = vec!["a == 1"; 300].join(" && ");
    assert!(!filter(&chain).matches(&json!({})));
}

#[test]
fn display_is_canonical_and_source_is_verbatim() {
    let src = r#"  status=="SHORT"  and not exists(lot)or lines[*].q in[1,2.5,"x",[true,null]]"#;
    let f = filter(src);
    assert_eq!(f.source(), src);
    let canonical =
        r#"status == "SHORT" && !exists(lot) || lines[*].q in [1, 2.5, "x", [true, null]]"#;
    assert_eq!(f.to_string(), canonical);
    assert_eq!(filter(canonical).expr, f.expr);
    assert_eq!(canonical.parse::<Filter>().map(|f| f.expr), Ok(f.expr));
}

/// The examples in `docs/filters.md` are what the code does: the tables
/// after `<!-- filter examples -->`, `<!-- filter errors -->` and
/// `<!-- field errors -->`, and each block after `<!-- fields of NAME: […] -->`.
mod doc {
    use super::*;

    const DOC: &str = include_str!("../../docs/filters.md");

    /// The cells of the body rows of the table after `marker`, without
    /// backticks (GFM's `\|` is a `|`).
    fn table(marker: &str) -> Vec<Vec<String>> {
        let after = DOC.split(marker).nth(1).expect("the doc has the marker");
        let rows: Vec<Vec<String>> = after
            .lines()
            .skip_while(|l| l.trim().is_empty())
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|line| {
                let line = line.replace("\\|", "\0");
                let cells = line.trim_matches('|').split('|');
                let unquote = |c: &str| c.trim().trim_matches('`').trim().replace('\0', "|");
                cells.map(unquote).collect()
            })
            .collect();
        assert!(rows.len() >= 4, "a table after {marker}");
        rows
    }

    #[test]
    fn filter_examples() {
        let shapes = ["pick_confirmed", "shipment_closed", "inventory_updated"];
        let bodies = shapes.map(golden);
        for row in table("<!-- filter examples -->") {
            for ((shape, body), want) in shapes.iter().zip(&bodies).zip(&row[1..]) {
                assert_eq!(holds(&row[0], body), want == "yes", "{} on {shape}", row[0]);
            }
        }
    }

    #[test]
    fn filter_errors() {
        for row in table("<!-- filter errors -->") {
            assert_eq!(error(&row[0]), row[1]);
        }
    }

    #[test]
    fn field_errors() {
        for row in table("<!-- field errors -->") {
            let field = if row[0] == "(empty)" { "" } else { &row[0] };
            let (_, e) = Projection::parse(&[field.to_owned()]).expect_err(field);
            assert_eq!(e.to_string(), row[1]);
        }
    }

    /// `v` with every whole float written as an integer.
    fn whole_numbers(v: Value) -> Value {
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9e15 => {
                    Value::from(f as i64)
                }
                _ => Value::Number(n),
            },
            Value::Array(items) => Value::Array(items.into_iter().map(whole_numbers).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, whole_numbers(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    #[test]
    fn field_examples() {
        let mut checked = 0;
        for part in DOC.split("<!-- fields of ").skip(1) {
            let (head, rest) = part.split_once(" -->\n```json\n").expect("a json block");
            let (name, fields) = head.split_once(": ").expect("NAME: [fields]");
            let fields: Vec<String> = serde_json::from_str(fields).expect("a JSON list");
            let block = &rest[..rest.find("```").expect("the block ends")];
            let want: Value = serde_json::from_str(block).expect("the block is JSON");
            let projection = Projection::parse(&fields).expect("the fields parse");
            let got = projection.apply(&golden(name));
            // As text, so key order counts; numbers by value (the seed
            // samples write `95.0`, the broker sends `95`).
            assert_eq!(
                whole_numbers(got).to_string(),
                whole_numbers(want).to_string(),
                "{name}: {fields:?}"
            );
            checked += 1;
        }
        assert_eq!(checked, 5);
    }
}

mod projection {
    use super::*;

    fn project(fields: &[&str], body: &Value) -> Value {
        let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        let projection =
            Projection::parse(&fields).unwrap_or_else(|(i, e)| panic!("field {i}: {e}"));
        assert_eq!(projection.fields(), fields);
        projection.apply(body)
    }

    fn as_text(value: &Value) -> String {
        serde_json::to_string(value).expect("serializes")
    }

    #[test]
    fn keeps_the_body_order_whatever_the_field_order() {
        let pick = golden("pick_confirmed");
        let got = project(
            &["status", "salesOrderId", "/timestamp", "missing", "status"],
            &pick,
        );
        assert_eq!(
            as_text(&got),
            r#"{"timestamp":"2026-02-04T14:32:15.123Z","salesOrderId":"ORD-2026-987654","status":"COMPLETE"}"#
        );
    }

    #[test]
    fn nested_objects_keep_their_nesting() {
        let channel = golden("channel_inventory");
        let got = project(
            &[
                "inventory.available",
                "channelVariant.channel.id",
                "/channelVariant/hash",
                "variant.nope",
            ],
            &channel,
        );
        assert_eq!(
            as_text(&got),
            r#"{"channelVariant":{"hash":null,"channel":{"id":21}},"inventory":{"available":5}}"#
        );
    }

    #[test]
    fn a_field_over_an_array_selects_it_in_every_element() {
        let pick = golden("pick_confirmed");
        let want = r#"{"lines":[{"product":"DRESS-BLK-M-001","lot":"LOT-2026-001"},{"product":"TOP-WHT-S-002"}]}"#;
        assert_eq!(
            as_text(&project(&["lines.lot", "lines.product"], &pick)),
            want
        );
        assert_eq!(
            as_text(&project(&["lines[*].lot", "lines[*].product"], &pick)),
            want
        );
        // An element without the field keeps its place as `{}`.
        assert_eq!(
            as_text(&project(&["lines.lot"], &pick)),
            r#"{"lines":[{"lot":"LOT-2026-001"},{}]}"#
        );
        // No element has it: no array.
        assert_eq!(as_text(&project(&["lines.nope"], &pick)), "{}");
    }

    #[test]
    fn indices_select_single_elements() {
        let pick = golden("pick_confirmed");
        let first = r#"{"lines":[{"product":"DRESS-BLK-M-001"}]}"#;
        assert_eq!(as_text(&project(&["lines[0].product"], &pick)), first);
        assert_eq!(as_text(&project(&["/lines/0/product"], &pick)), first);
        let second = r#"{"lines":[{"product":"TOP-WHT-S-002"}]}"#;
        assert_eq!(as_text(&project(&["lines[1].product"], &pick)), second);
        assert_eq!(
            as_text(&project(
                &["lines[1].lineNumber", "lines[0].lineNumber"],
                &pick
            )),
            r#"{"lines":[{"lineNumber":1},{"lineNumber":2}]}"#
        );
        assert_eq!(
            as_text(&project(
                &["lines[7].product", "/lines/01", "/lines/product"],
                &pick
            )),
            "{}"
        );
    }

    #[test]
    fn a_whole_value_wins_over_its_parts() {
        let shipment = golden("shipment_closed");
        let got = project(&["details[0].lot", "details", "/details/0"], &shipment);
        assert_eq!(got, json!({"details": shipment["details"].clone()}));
        assert_eq!(
            project(&["details"], &shipment)["details"][0]["quantityShipped"],
            json!(95.0)
        );
    }

    #[test]
    fn pointers_unescape_and_address_any_key() {
        let body = json!({"a/b": 1, "m~n": 2, "": {"x y": 3}, "arr": [[{"k": 1}, "s"], 4]});
        assert_eq!(
            project(&["/a~1b", "/m~0n", "//x y"], &body),
            json!({"a/b": 1, "m~n": 2, "": {"x y": 3}})
        );
        // `arr.k` selects every element at any depth: those without `k`
        // keep their places.
        assert_eq!(
            project(&["arr.k"], &body),
            json!({"arr": [[{"k": 1}, null], null]})
        );
        assert_eq!(
            project(&["arr[*][0]"], &body),
            json!({"arr": [[{"k": 1}], null]})
        );
        assert_eq!(project(&["/arr/1"], &body), json!({"arr": [4]}));
        assert_eq!(project(&[], &body), json!({}));
        assert_eq!(project(&["a"], &json!([1])), json!({}));
    }

    #[test]
    fn errors_name_the_field_and_column() {
        let parse = |fields: &[&str]| {
            let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            Projection::parse(&fields)
                .map(|_| ())
                .map_err(|(i, e)| (i, e.to_string()))
        };
        let err = |i: usize, message: &str| Err((i, message.to_owned()));
        assert_eq!(
            parse(&["a", "b.", "c"]),
            err(
                1,
                "column 3: expected a field name after `.`, found the end of the field"
            )
        );
        assert_eq!(
            parse(&[""]),
            err(
                0,
                "column 1: expected a field name, found the end of the field"
            )
        );
        assert_eq!(
            parse(&["a b"]),
            err(
                0,
                "column 3: expected `.`, `[` or the end of the field, found `b`"
            )
        );
        assert_eq!(
            parse(&["a", "/x/~2"]),
            err(
                1,
                "column 4: in a JSON pointer, `~` must be followed by `0` or `1`"
            )
        );
        assert_eq!(
            parse(&["lines[x]"]),
            err(0, "column 7: expected an index or `*` after `[`, found `x`")
        );
        let long = "a".repeat(super::super::MAX_FIELD_BYTES + 1);
        assert_eq!(
            parse(&["a", &long]),
            err(1, "column 1: a field is at most 1024 bytes long")
        );
        let many = vec!["a"; MAX_FIELDS + 1];
        assert_eq!(
            parse(&many),
            err(MAX_FIELDS, "column 1: at most 256 fields can be selected")
        );
        assert!(parse(&vec!["a"; MAX_FIELDS]).is_ok());
    }
}

mod properties {
    use proptest::{collection::vec, prelude::*};

    use super::*;
    use crate::filter::ast::CmpOp;

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("lines".to_owned()),
            Just("status".to_owned()),
            "[a-zA-Z_][a-zA-Z0-9_]{0,6}".prop_filter("not a keyword", |w| {
                !["and", "or", "not", "in", "exists", "true", "false", "null"].contains(&w.as_str())
            }),
        ]
    }

    fn path() -> impl Strategy<Value = Path> {
        let segment = prop_oneof![
            name().prop_map(Segment::Key),
            (0usize..3).prop_map(Segment::Index),
            Just(Segment::Any),
        ];
        (name(), vec(segment, 0..4)).prop_map(|(first, rest)| {
            Path(std::iter::once(Segment::Key(first)).chain(rest).collect())
        })
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            // `Value::from` turns the non-finite ones into `null`.
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
        ]
    }

    fn literal() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(3, 12, 4, |inner| vec(inner, 0..4).prop_map(Value::Array))
    }

    fn operand() -> impl Strategy<Value = Operand> {
        prop_oneof![
            path().prop_map(Operand::Path),
            literal().prop_map(Operand::Literal)
        ]
    }

    fn expr() -> impl Strategy<Value = Expr> {
        let op = prop_oneof![
            Just(CmpOp::Eq),
            Just(CmpOp::Ne),
            Just(CmpOp::Lt),
            Just(CmpOp::Le),
            Just(CmpOp::Gt),
            Just(CmpOp::Ge),
        ];
        let leaf = prop_oneof![
            (operand(), op, operand()).prop_map(|(left, op, right)| {
                // The grammar allows `[*]` on one side only.
                let right = if left.has_any() && right.has_any() {
                    Operand::Literal(Value::Null)
                } else {
                    right
                };
                Expr::Compare { left, op, right }
            }),
            (operand(), vec(literal(), 0..4), any::<bool>()).prop_map(
                |(operand, list, negated)| Expr::In {
                    operand,
                    list,
                    negated
                }
            ),
            path().prop_map(Expr::Exists),
            operand().prop_map(Expr::Truthy),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 2..4).prop_map(Expr::Or),
                vec(inner.clone(), 2..4).prop_map(Expr::And),
                inner.prop_map(|x| Expr::Not(Box::new(x))),
            ]
        })
    }

    /// Bodies whose keys overlap the filters' names often enough to matter.
    fn body() -> impl Strategy<Value = Value> {
        let key =
            prop_oneof![Just("a"), Just("lines"), Just("status"), Just("q")].prop_map(String::from);
        scalar().prop_recursive(4, 48, 5, move |inner| {
            prop_oneof![
                vec(inner.clone(), 0..5).prop_map(Value::Array),
                vec((key.clone(), inner), 0..5)
                    .prop_map(|kvs| Value::Object(kvs.into_iter().collect())),
            ]
        })
    }

    /// Text that is mostly made of the language's own tokens.
    fn token_soup() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("a"),
            Just("lines"),
            Just("."),
            Just("[*]"),
            Just("[0]"),
            Just("["),
            Just("]"),
            Just("=="),
            Just("!="),
            Just("<"),
            Just(">="),
            Just("&&"),
            Just("||"),
            Just("!"),
            Just("not"),
            Just("in"),
            Just("and"),
            Just("or"),
            Just("exists"),
            Just("("),
            Just(")"),
            Just(","),
            Just("1"),
            Just("-2.5e3"),
            Just("\"x\\u00e9\""),
            Just("true"),
            Just("null"),
            Just("\""),
            Just("é"),
            Just("~"),
            Just("/"),
        ];
        vec(token, 0..24).prop_map(|tokens| tokens.join(" "))
    }

    proptest! {
        #[test]
        fn parse_never_panics(src in any::<String>()) {
            let _ = Filter::parse(&src);
            let _ = Projection::parse(&[src]);
        }

        #[test]
        fn token_soup_never_panics(src in token_soup(), body in body()) {
            if let Ok(f) = Filter::parse(&src) {
                f.matches(&body);
                prop_assert_eq!(filter(&f.to_string()).expr, f.expr);
            }
            let fields: Vec<String> = src.split(' ').map(String::from).collect();
            if let Ok(p) = Projection::parse(&fields) {
                p.apply(&body);
            }
        }

        #[test]
        fn canonical_text_round_trips(expr in expr(), body in body()) {
            let text = expr.to_string();
            prop_assume!(text.len() <= MAX_FILTER_BYTES);
            let f = Filter::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            prop_assert_eq!(&f.expr, &expr);
            prop_assert_eq!(f.to_string(), text);
            f.matches(&body);
        }

        #[test]
        fn projection_never_panics(fields in vec("[a-z/.*\\[\\]0-9~]{0,12}", 0..6), body in body()) {
            if let Ok(p) = Projection::parse(&fields) {
                let out = p.apply(&body);
                prop_assert!(out.is_object() || out.is_array());
            }
        }
    }
}
