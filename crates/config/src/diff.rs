//! The difference between two versions of an item, as a unified diff of their lines.

/// A unified diff (three lines of context) from `old` to `new`, with `old_name` and
/// `new_name` in its header. Empty when the contents are the same.
pub fn unified(old_name: &str, old: &str, new_name: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_changed_lines_with_context() {
        let d = unified("v1", "a=1\nb=2\nc=3\n", "v2", "a=1\nb=20\nc=3\n");
        assert!(d.starts_with("--- v1\n+++ v2\n"), "{d}");
        assert!(d.contains("-b=2\n+b=20\n"), "{d}");
        assert!(d.contains(" a=1\n"), "{d}");
        assert_eq!(unified("v1", "x", "v2", "x"), "");
    }
}
