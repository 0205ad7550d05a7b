//! Counted nouns for every program's output (CLI, tray, daemon messages): one place that
//! decides between "1 package" and "2 packages", so no text says "1 packages" or "change(s)".

/// A number of things: every integer type the programs count with (SQLite counts are `i64`).
pub trait Amount: Copy {
    fn amount(self) -> u64;
}

macro_rules! amount {
    ($($t:ty),*) => {$(impl Amount for $t {
        fn amount(self) -> u64 {
            self as u64
        }
    })*};
}
amount!(u8, u16, u32, u64, usize);

macro_rules! signed_amount {
    ($($t:ty),*) => {$(impl Amount for $t {
        /// Negative numbers count as none.
        fn amount(self) -> u64 {
            self.max(0) as u64
        }
    })*};
}
signed_amount!(i32, i64);

/// `n` followed by the singular or the plural form: `count(1, "package", "packages")` is
/// "1 package", `count(3, "package", "packages")` "3 packages".
pub fn count(n: impl Amount, one: &str, many: &str) -> String {
    let n = n.amount();
    format!("{n} {}", plural(n, one, many))
}

/// The form of a noun for `n` items, without the number.
pub fn plural<'a>(n: impl Amount, one: &'a str, many: &'a str) -> &'a str {
    if n.amount() == 1 { one } else { many }
}

/// [`count`] for the most common noun.
pub fn packages(n: impl Amount) -> String {
    count(n, "package", "packages")
}

/// "the 1 other machine" / "the 3 other machines" / "no other machine".
pub fn other_machines(n: u64) -> String {
    match n {
        0 => "no other machine".to_owned(),
        n => format!("the {}", count(n, "other machine", "other machines")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singular_only_for_one() {
        assert_eq!(packages(0usize), "0 packages");
        assert_eq!(packages(1u64), "1 package");
        assert_eq!(packages(2u64), "2 packages");
        assert_eq!(count(1u32, "change", "changes"), "1 change");
        assert_eq!(plural(1u8, "becomes", "become"), "becomes");
        assert_eq!(plural(3u8, "becomes", "become"), "become");
        assert_eq!(other_machines(0), "no other machine");
        assert_eq!(other_machines(1), "the 1 other machine");
        assert_eq!(other_machines(4), "the 4 other machines");
    }
}
