//! Several files in one fuzz input: the parts are joined by [`SEPARATOR`], a line no JSON or
//! template of ours contains, so the fuzzer can grow or shrink any part without a length field
//! going stale.

/// What separates the parts of a multi-file input.
pub const SEPARATOR: &[u8] = b"\n--8<-- pocketvlm-fuzz --8<--\n";

/// The first `N - 1` separators cut `data` into `N` parts (missing parts are empty; the last
/// part keeps any further separators).
pub fn split<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut parts = [&data[data.len()..]; N];
    let mut rest = data;
    for (i, part) in parts.iter_mut().enumerate() {
        let cut = if i + 1 < N { find(rest, SEPARATOR) } else { None };
        match cut {
            Some(at) => {
                *part = &rest[..at];
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                *part = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    parts
}

/// The parts joined: what [`split`] takes apart again.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(SEPARATOR)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_undoes_join() {
        let parts: [&[u8]; 3] = [b"{}", b"", b"tail"];
        assert_eq!(split::<3>(&join(&parts)), parts);
        let short: [&[u8]; 3] = split(b"only");
        assert_eq!(short, [&b"only"[..], b"", b""]);
    }
}
