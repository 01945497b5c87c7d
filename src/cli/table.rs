//! Text tables for the operator's commands: columns padded to their widest cell, control characters
//! (which a pod or network name from outside may carry) shown as `?`. All rendering lives in `cli/`; the small words it is written with
//! (ages, short IDs, plurals) are here too.

/// Columns padded to their widest cell, two spaces apart; the last one unpadded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&head).chain(&rows) {
        let last = r.len().saturating_sub(1);
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            if i != last {
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

/// What a terminal shows of text read from disk or the API: control characters (escape sequences) as `?`.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// An age as people read it: 5s, 3m, 2h, 4d.
pub fn human_age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A container ID as `docker ps` shows it: its first 12 characters.
pub fn short_id(id: &str) -> String {
    printable(&id.chars().take(12).collect::<String>())
}

/// `-` for nothing.
pub fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        printable(s)
    }
}

pub fn plural_s(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

pub fn plural_es(n: usize) -> &'static str {
    if n == 1 { "" } else { "es" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        for (secs, want) in [
            (0, "0s"),
            (5, "5s"),
            (59, "59s"),
            (60, "1m"),
            (3599, "59m"),
            (7200, "2h"),
            (86399, "23h"),
            (4 * 86400 + 5, "4d"),
        ] {
            assert_eq!(human_age(secs), want, "{secs}");
        }
    }

    #[test]
    fn tables_align_and_show_no_escape_sequences() {
        let t = table(
            &["IP", "CONTAINER", "STATUS"],
            &[
                vec!["10.0.0.2".into(), "abc".into(), "ok".into()],
                vec!["10.0.0.10".into(), "x\u{1b}[2J".into(), "LEAKED".into()],
            ],
        );
        assert_eq!(
            t,
            "IP         CONTAINER  STATUS\n\
             10.0.0.2   abc        ok\n\
             10.0.0.10  x?[2J      LEAKED\n"
        );
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(dash(""), "-");
    }
}
