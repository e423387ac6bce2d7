//! Pinning a model: `Model.load(url, { integrity: "sha256-…" })` takes the Subresource Integrity
//! form of `manifest.json`'s sha256 (`sha256-` and the base64 of the 32-byte digest, as
//! `openssl dgst -sha256 -binary manifest.json | base64` prints it). The manifest records the size
//! and sha256 of the tokenizer and of every shard, and each is verified against it, so pinning the
//! manifest pins every byte of the model.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pocketvlm_format::sha256_hex;
use pocketvlm_runtime::RuntimeError;

use crate::errors::WebError;

/// The sha256 a fetched `manifest.json` must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// Lower-case hex of the digest (the manifest's notation for its files).
    hex: String,
}

impl Pin {
    /// Parse `sha256-<base64>`; another algorithm, bad base64 or a digest that is not 32 bytes
    /// is an invalid-input error.
    pub fn parse(integrity: &str) -> Result<Self, WebError> {
        let invalid = |why: &str| WebError::invalid(format!("integrity {integrity:?}: {why}"));
        let encoded =
            integrity.trim().strip_prefix("sha256-").ok_or_else(|| invalid("expected sha256-<base64>"))?;
        let digest = STANDARD.decode(encoded).map_err(|_| invalid("the digest is not base64"))?;
        if digest.len() != 32 {
            return Err(invalid(&format!("a sha256 digest has 32 bytes, not {}", digest.len())));
        }
        Ok(Self { hex: digest.iter().map(|b| format!("{b:02x}")).collect() })
    }

    /// `Err(Integrity)` unless `bytes` (the file `file`) have the pinned sha256.
    pub fn check(&self, file: &str, bytes: &[u8]) -> Result<(), RuntimeError> {
        let found = sha256_hex(bytes);
        if found == self.hex {
            return Ok(());
        }
        Err(RuntimeError::Integrity {
            file: file.to_string(),
            expected: format!("sha256 {}", self.hex),
            found: format!("sha256 {found}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // FIPS 180-2's test vector: sha256("abc").
    const ABC_HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const ABC_SRI: &str = "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";

    #[test]
    fn a_pin_accepts_its_bytes_and_refuses_others() {
        let pin = Pin::parse(ABC_SRI).unwrap();
        assert_eq!(pin.hex, ABC_HEX);
        pin.check("manifest.json", b"abc").unwrap();
        match pin.check("manifest.json", b"abd") {
            Err(RuntimeError::Integrity { file, expected, found }) => {
                assert_eq!(
                    (file.as_str(), expected.as_str()),
                    ("manifest.json", format!("sha256 {ABC_HEX}").as_str())
                );
                assert!(found.starts_with("sha256 ") && found != expected, "{found}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_pins_are_invalid_input() {
        for bad in
            ["", "abc", "sha384-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=", "sha256-***", "sha256-YWJj"]
        {
            assert_eq!(Pin::parse(bad).unwrap_err().name, "TypeError", "{bad:?}");
        }
    }
}
