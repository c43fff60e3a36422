//! Peer-provided text made safe for a log line or an error message: control and other
//! non-printable characters escaped (so a peer cannot start a forged log line or hide text
//! with terminal escapes or bidirectional overrides), and the length capped (so a peer cannot
//! make one request write megabytes of log).
//!
//! Used wherever a string a peer controls (a request's header id, a remote error's message, a
//! connection close reason, a certificate field) is logged or put into an error.

use std::fmt;

/// Characters of peer-provided text kept by [`untrusted`]; the rest is replaced by `...`.
pub(crate) const MAX_UNTRUSTED_CHARS: usize = 256;

/// `value` formatted with non-printable characters escaped (as `char::escape_debug` does:
/// `\n`, `\u{1b}`, `\u{202e}`, ...) and at most [`MAX_UNTRUSTED_CHARS`] characters kept.
/// Formatting it allocates nothing.
pub(crate) fn untrusted<T: fmt::Display>(value: T) -> Untrusted<T> {
    Untrusted {
        value,
        max_chars: MAX_UNTRUSTED_CHARS,
    }
}

/// A short escaped copy of `s`, at most `max_chars` characters of it.
pub(crate) fn excerpt(s: &str, max_chars: usize) -> String {
    Untrusted {
        value: s,
        max_chars,
    }
    .to_string()
}

/// Peer-provided text as a log line or an error message may carry it (see [`untrusted`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Untrusted<T> {
    value: T,
    max_chars: usize,
}

impl<T: fmt::Display> fmt::Display for Untrusted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Escaper {
            out: f,
            left: self.max_chars,
            truncated: false,
        };
        // `Escaper` never fails on its own: an error here is the formatter's.
        fmt::write(&mut out, format_args!("{}", self.value))?;
        if out.truncated {
            out.out.write_str("...")?;
        }
        Ok(())
    }
}

/// Writes through to `out`, escaping as it goes, until `left` characters were written.
struct Escaper<'a, 'b> {
    out: &'a mut fmt::Formatter<'b>,
    left: usize,
    truncated: bool,
}

impl fmt::Write for Escaper<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.left == 0 {
                self.truncated = true;
                return Ok(());
            }
            self.left -= 1;
            if needs_escape(c) {
                for e in c.escape_debug() {
                    self.out.write_char(e)?;
                }
            } else {
                self.out.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Whether `c` is escaped: control characters, the backslash (so an escape in the output is
/// never ambiguous), and whatever `escape_debug` does not print as itself, apart from quotes.
fn needs_escape(c: char) -> bool {
    match c {
        '"' | '\'' => false,
        '\\' => true,
        c => c.is_control() || c.escape_debug().nth(1).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let s = untrusted("n1\nWARN forged\r\u{1b}[31m\u{202e}\\ \"q\" é").to_string();
        assert_eq!(s, "n1\\nWARN forged\\r\\u{1b}[31m\\u{202e}\\\\ \"q\" é");
        assert!(!s.chars().any(char::is_control));
    }

    #[test]
    fn length_is_capped() {
        let long = "a".repeat(8 * 1024 * 1024);
        let s = untrusted(&long).to_string();
        assert_eq!(s.len(), MAX_UNTRUSTED_CHARS + 3);
        assert!(s.ends_with("..."));
        assert_eq!(excerpt("abcdef", 3), "abc...");
        assert_eq!(excerpt("abc", 3), "abc");
        // Escapes count as one character of the input.
        assert_eq!(excerpt("\n\n\n\n", 2), "\\n\\n...");
    }

    #[test]
    fn any_display_is_sanitized() {
        let error = std::io::Error::other("closed: \nINFO forged");
        assert_eq!(untrusted(&error).to_string(), "closed: \\nINFO forged");
    }
}
