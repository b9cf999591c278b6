//! "Did you mean": the closest known spelling of a misspelt name.

/// The candidate closest to `word` by edit distance, if it is close enough
/// to be a typo (at most one edit in four characters, and at least one).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    within(word, candidates, (word.chars().count() / 4).max(1))
}

/// The candidate at most `max` edits from `word`, the closest first.
pub fn within<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|&(d, _)| d <= max)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `" (did you mean `x`?)"` for the closest candidate, or nothing.
pub fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Edit distance over chars where swapping two neighbours is one edit
/// (optimal string alignment): `stauts` is one typo from `status`.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_word_and_strangers_find_nothing() {
        let types = ["pick.confirmed", "shipment.closed", "order.status"];
        assert_eq!(closest("pick.confimed", types), Some("pick.confirmed"));
        assert_eq!(closest("shipment.close", types), Some("shipment.closed"));
        assert_eq!(closest("dock.door_opened", types), None);
        let levels = ["error", "warn", "info", "debug", "trace", "off"];
        assert_eq!(closest("debugg", levels), Some("debug"));
        assert_eq!(closest("stauts", ["status", "lines"]), Some("status"));
        assert_eq!(closest("x", levels), None);
        assert_eq!(hint("inf", levels), " (did you mean `info`?)");
        assert_eq!(hint("verbose", levels), "");
    }
}
