//! Checks of what a program printed.

/// Asserts that `text` contains every one of `needles`; the failure names
/// the missing one, `what` was read (`--help`, a log) and shows `text`.
pub fn assert_mentions(what: &str, text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{what} lacks {needle:?}:\n{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::assert_mentions;

    #[test]
    fn every_needle_must_be_there() {
        assert_mentions("the text", "alpha beta", &["alpha", "beta"]);
        let missing = std::panic::catch_unwind(|| {
            assert_mentions("the text", "alpha beta", &["alpha", "gamma"]);
        });
        let message = *missing.unwrap_err().downcast::<String>().unwrap();
        assert!(message.starts_with("the text lacks \"gamma\""), "{message}");
    }
}
