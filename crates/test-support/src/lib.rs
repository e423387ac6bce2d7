//! What the test suites of several crates share (a dev-dependency only): reading the token id
//! lists of the fixtures' expectations, and the URL of the server `cargo xtask test` starts for
//! the browser tests.

/// A JSON list of token ids, as `tests/fixtures/generate.py` writes transformers' ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    let list = v.as_array().unwrap_or_else(|| panic!("an id list, not {v}"));
    list.iter()
        .map(|x| {
            let id = x.as_u64().unwrap_or_else(|| panic!("a token id, not {x}"));
            u32::try_from(id).unwrap_or_else(|_| panic!("a token id below 2^32, not {id}"))
        })
        .collect()
}

/// The base URL of the server `cargo xtask test` starts for the browser tests (it serves
/// `/model/tiny/`, the converted fixture; `/fixtures/`, `tests/fixtures`; `/corrupt/`, the
/// converted fixture with one byte flipped; `/quant/`, its quantized variants), handed to the
/// build in `POCKETVLM_TEST_SERVER`.
pub fn server() -> &'static str {
    match option_env!("POCKETVLM_TEST_SERVER") {
        Some(url) => url,
        None => panic!(
            "POCKETVLM_TEST_SERVER was not set when this test was built: run the browser tests with \
             `cargo xtask test`, which converts the tiny fixture and serves it over HTTP"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::ids;

    #[test]
    fn id_lists_read_as_u32() {
        assert_eq!(ids(&serde_json::json!([0, 49279, 4294967295u64])), vec![0, 49279, u32::MAX]);
    }

    #[test]
    #[should_panic(expected = "below 2^32")]
    fn ids_past_u32_are_refused() {
        ids(&serde_json::json!([4294967296u64]));
    }
}
