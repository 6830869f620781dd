//! "Did you mean": the known name nearest a misspelt one, for the errors
//! of URL keys, configuration keys and environment variables.

/// The name among `known` nearest `name` within two edits (letters
/// compared case-insensitively), if any; the first of the nearest on a tie.
///
/// ```
/// use plane_core::suggest::closest;
/// assert_eq!(closest("max_inflight", ["max_in_flight", "timeout_ms"]), Some("max_in_flight"));
/// assert_eq!(closest("colour", ["timeout_ms"]), None);
/// ```
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (edit_distance(&name, &k.to_ascii_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance: insertions, deletions and substitutions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(row[j]).min(above)
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("bucket", "bukcet"), 2);
    }

    #[test]
    fn the_nearest_within_two_edits() {
        let known = ["lease_ms", "bucket", "discovery"];
        assert_eq!(closest("lease", known), None, "three edits away");
        assert_eq!(closest("Bucket", known), Some("bucket"));
        assert_eq!(closest("discovry", known), Some("discovery"));
        assert_eq!(closest("nothing", known), None);
    }
}
