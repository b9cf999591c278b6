//! The model test: random sequences of appends, failures, crashes and
//! reopens, checked against a `Vec` of what was acknowledged.

use super::*;

/// What the model test does, one step at a time.
#[derive(Debug, Clone)]
enum Step {
    /// A group of batches of ids (from a small pool, so duplicates occur).
    Group(Vec<Vec<u8>>),
    Fail(Op, u32),
    Crash,
    Reopen,
    Truncate(u8),
}

fn step() -> impl Strategy<Value = Step> {
    let batch = prop::collection::vec(0u8..40, 1..6);
    prop_oneof![
        6 => prop::collection::vec(batch, 1..4).prop_map(Step::Group),
        1 => (prop_oneof![Just(Op::Write), Just(Op::Sync), Just(Op::Read)], 0u32..3)
            .prop_map(|(op, n)| Step::Fail(op, n)),
        1 => Just(Step::Crash),
        1 => Just(Step::Reopen),
        1 => any::<u8>().prop_map(Step::Truncate),
    ]
}

/// The model: what was acknowledged, by offset.
#[derive(Default)]
struct Model {
    /// Ids by offset - 1 (offsets start at 1).
    ids: Vec<String>,
    first: Offset,
    /// First offsets of truncations that failed, perhaps after writing
    /// their start file but before it was durable: a restart may find any
    /// of them, until a truncation writes the start file again.
    unsure: Vec<Offset>,
    poisoned: bool,
    /// Ids of appends that failed while their commit's bytes could not be
    /// cut back: the next start may find them (their callers were told
    /// the outcome is unknown).
    maybe: Vec<String>,
}

impl Model {
    fn next(&self) -> Offset {
        Offset::new(self.ids.len() as u64 + 1)
    }

    fn offset_of(&self, id: &str) -> Option<Offset> {
        // An id comes back only after retention removed it: the last one.
        let at = self.ids.iter().rposition(|i| i == id)? as u64 + 1;
        (at >= self.first.get()).then_some(Offset::new(at))
    }

    /// Checks a group's outcome against the model and records it.
    fn apply(&mut self, batches: &[Vec<String>], out: &[Result<Vec<Appended>>]) {
        for (ids, r) in batches.iter().zip(out) {
            let Ok(results) = r else { continue };
            assert!(!self.poisoned, "an append succeeded after a failed sync");
            for (id, a) in ids.iter().zip(results) {
                match self.offset_of(id) {
                    Some(o) => assert_eq!((a.offset, a.duplicate), (o, true), "{id}"),
                    None => {
                        assert_eq!((a.offset, a.duplicate), (self.next(), false), "{id}");
                        self.ids.push(id.clone());
                    }
                }
            }
        }
    }

    /// After a restart: appends work again, and a truncation that failed
    /// after writing its start file may have taken effect (retention
    /// removes what it was allowed to remove).
    fn reopened(&mut self, h: &Harness) {
        self.poisoned = false;
        let first = h.log.first().max(Offset::new(1));
        if first != self.first.max(Offset::new(1)) {
            assert!(
                self.unsure.contains(&first),
                "first {first}: {:?}",
                self.unsure
            );
            self.first = first;
        }
        // Opening made what it read durable.
        self.unsure.clear();
        for offset in self.next().through(h.log.next().prev()) {
            let id = h.id_at(offset).unwrap().expect("the head is dense");
            assert!(
                self.maybe.contains(&id),
                "{id} at {offset} was never acknowledged"
            );
            self.ids.push(id);
        }
        self.maybe.clear();
    }

    /// Everything acknowledged reads back at its offset, and nothing else.
    fn check(&self, h: &Harness) {
        assert_eq!(h.head(), self.next(), "the head is what was acknowledged");
        assert_eq!(h.log.next(), self.next());
        assert_eq!(
            h.log.first().max(Offset::FIRST),
            self.first.max(Offset::FIRST)
        );

        for offset in self.first.max(Offset::FIRST).through(self.next().prev()) {
            let id = &self.ids[offset.get() as usize - 1];
            assert_eq!(h.id_at(offset).unwrap().as_ref(), Some(id), "at {offset}");
            assert_eq!(h.log.offset_of_id(id).unwrap(), Some(offset), "{id}");
        }
        assert_eq!(h.id_at(self.next()).unwrap(), None);
    }
}

fn run_model(steps: Vec<Step>) {
    let mut h = Harness::new(600);
    let mut model = Model {
        first: Offset::new(1),
        ..Default::default()
    };
    for step in steps {
        let arms = matches!(step, Step::Fail(..));
        match step {
            Step::Group(batches) => {
                let batches: Vec<Vec<String>> = batches
                    .iter()
                    .map(|b| b.iter().map(|i| format!("id{i}")).collect())
                    .collect();
                let refs: Vec<Vec<&str>> = batches
                    .iter()
                    .map(|b| b.iter().map(String::as_str).collect())
                    .collect();
                let refs: Vec<&[&str]> = refs.iter().map(Vec::as_slice).collect();
                let out = h.group(&refs);
                model.apply(&batches, &out);
                if let Some(why) = h.health.borrow().log.as_deref() {
                    model.poisoned = true;
                    if why.contains("may be found") && model.maybe.is_empty() {
                        for (ids, r) in batches.iter().zip(&out) {
                            if r.is_err() {
                                model.maybe.extend(ids.iter().cloned());
                            }
                        }
                    }
                }
            }
            Step::Fail(op, after) => h.fs.fail(op, after, ErrorKind::Other),
            Step::Crash | Step::Reopen => {
                h = h
                    .reopen(matches!(step, Step::Crash))
                    .expect("the log reopens");
                model.reopened(&h);
            }
            Step::Truncate(n) => {
                let before = Offset::new(n as u64 % (model.next() + 2).get());
                if let Ok(removed) = h.truncate(before) {
                    let first = before.min(model.next()).max(model.first);
                    assert_eq!(removed as u64, first - model.first);
                    model.first = first;
                    if removed > 0 {
                        // The start file was written again.
                        model.unsure.clear();
                    }
                } else if h.log.first() != model.first {
                    // Failed after moving the first offset (removing
                    // segments).
                    model.first = h.log.first();
                } else {
                    model.unsure.push(before.min(model.next()).max(model.first));
                }
            }
        }
        if !arms {
            // A fault armed by the previous step was for this one.
            h.fs.heal();
            model.check(&h);
        }
    }
    let h = h.reopen(true).expect("the log reopens after a crash");
    model.reopened(&h);
    model.check(&h);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    })]

    /// Random appends, batches, faults, crashes, restarts and truncations
    /// against a `Vec`: after every step every acknowledged event reads
    /// back at its offset, nothing unacknowledged is visible, offsets are
    /// dense and the head never passes what is durable.
    #[test]
    fn the_log_keeps_what_it_acknowledged(steps in prop::collection::vec(step(), 1..40)) {
        run_model(steps);
    }
}
