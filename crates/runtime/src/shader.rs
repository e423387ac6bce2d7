//! WGSL sources (plain `.wgsl` files in `shaders/`, embedded at compile time) and the tiny
//! preprocessor that turns one source into variants.
//!
//! Directives, each alone on its line: `#ifdef NAME`, `#ifndef NAME`, `#else`, `#endif` (nestable),
//! and `#include NAME`, which pastes the library file `shaders/lib/NAME.wgsl` (preprocessed with the
//! same defines; each library file at most once per shader, so shared helpers are defined once and
//! includes cannot loop). `{{NAME}}` anywhere in an active line is replaced by the define's value.
//! An unknown `{{NAME}}`, shader or library and unbalanced directives are errors, never silently
//! ignored.

use std::collections::BTreeMap;

use crate::error::{Result, RuntimeError};

macro_rules! shaders {
    ($($name:literal),* $(,)?) => {
        /// Every embedded shader, by file stem.
        pub const SOURCES: &[(&str, &str)] = &[
            $(($name, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shaders/", $name, ".wgsl"))),)*
        ];
    };
}

shaders![
    "matmul",
    "matmul_blocked",
    "matvec",
    "norm",
    "elementwise",
    "attention",
    "attention_combine",
    "attention_scores",
    "im2col",
    "pixel_shuffle",
    "embed",
    "argmax",
    "rotate",
    "quantize",
    "rotate_quantize",
    "qmatmul",
    "latent_up",
    "bf16_rows",
    "lib/attention",
    "lib/activation",
    "lib/attention_qk",
    "lib/attention_values",
    "lib/block",
    "lib/grid",
    "lib/hadamard",
    "lib/half",
    "lib/int",
    "lib/linear",
    "lib/silu",
    "lib/subgroups",
    "lib/texels",
    "lib/tiles",
    "lib/weight",
    "lib/workgroup_max",
];

/// Prefix of the library files `#include` may name.
const LIBRARY: &str = "lib/";

/// Preprocessor defines: name → value. Ordered, so it can key a pipeline cache.
pub type Defines = BTreeMap<String, String>;

/// Source of an embedded shader.
pub fn source(name: &str) -> Result<&'static str> {
    SOURCES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| RuntimeError::Shader { shader: name.into(), message: "no such shader".into() })
}

/// Expand directives, includes and `{{NAME}}` substitutions.
pub fn preprocess(name: &str, src: &str, defines: &Defines) -> Result<String> {
    let mut included = Vec::new();
    let mut out = String::with_capacity(src.len());
    expand(name, src, defines, &mut included, &mut out)?;
    Ok(out)
}

/// Expand `src` into `out`; `included` holds the library files already pasted (or being pasted).
fn expand(
    name: &str,
    src: &str,
    defines: &Defines,
    included: &mut Vec<String>,
    out: &mut String,
) -> Result<()> {
    let err = |line: usize, message: String| RuntimeError::Shader {
        shader: name.to_string(),
        message: format!("line {}: {message}", line + 1),
    };
    // Stack of (branch active, any enclosing inactive).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    for (i, line) in src.lines().enumerate() {
        let trimmed = line.trim();
        let active = stack.iter().all(|(a, _)| *a);
        if let Some(rest) = trimmed.strip_prefix("#ifdef ").or_else(|| trimmed.strip_prefix("#ifndef ")) {
            let defined = defines.contains_key(rest.trim());
            let want = trimmed.starts_with("#ifdef");
            stack.push((defined == want, !active));
            continue;
        }
        if trimmed == "#else" {
            let top = stack.last_mut().ok_or_else(|| err(i, "#else without #ifdef".into()))?;
            top.0 = !top.0;
            continue;
        }
        if trimmed == "#endif" {
            stack.pop().ok_or_else(|| err(i, "#endif without #ifdef".into()))?;
            continue;
        }
        if let Some(lib) = trimmed.strip_prefix("#include ") {
            if !active {
                continue;
            }
            let path = format!("{LIBRARY}{}", lib.trim());
            if included.contains(&path) {
                continue;
            }
            let text = source(&path).map_err(|_| err(i, format!("no library shader {path:?}")))?;
            included.push(path.clone());
            expand(&path, text, defines, included, out)?;
            continue;
        }
        if trimmed.starts_with('#') {
            return Err(err(i, format!("unknown directive {trimmed:?}")));
        }
        if !active {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").ok_or_else(|| err(i, "unclosed {{".into()))? + start;
            let key = rest[start + 2..end].trim();
            let value = defines.get(key).ok_or_else(|| err(i, format!("{{{{{key}}}}} is not defined")))?;
            out.push_str(value);
            rest = &rest[end + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    if !stack.is_empty() {
        return Err(err(src.lines().count(), "unterminated #ifdef".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(pairs: &[(&str, &str)]) -> Defines {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn branches_and_substitution() {
        let src = "a\n#ifdef X\nb {{N}}\n#ifndef Y\nc\n#else\nd\n#endif\n#else\ne\n#endif\nf\n";
        assert_eq!(preprocess("t", src, &defs(&[("X", ""), ("N", "7")])).unwrap(), "a\nb 7\nc\nf\n");
        assert_eq!(
            preprocess("t", src, &defs(&[("X", ""), ("Y", ""), ("N", "1")])).unwrap(),
            "a\nb 1\nd\nf\n"
        );
        assert_eq!(preprocess("t", src, &defs(&[])).unwrap(), "a\ne\nf\n");
    }

    #[test]
    fn errors_are_reported() {
        assert!(preprocess("t", "{{MISSING}}\n", &defs(&[])).is_err());
        assert!(preprocess("t", "#ifdef A\n", &defs(&[])).is_err());
        assert!(preprocess("t", "#endif\n", &defs(&[])).is_err());
        assert!(preprocess("t", "#define A\n", &defs(&[])).is_err());
        assert!(source("nope").is_err());
    }

    #[test]
    fn includes_paste_each_library_file_once_with_the_defines() {
        let src = "#include half\n#ifdef X\n#include half\n#include grid\n#endif\nmain\n";
        let text = preprocess("t", src, &defs(&[("X", ""), ("BF16", "")])).unwrap();
        assert_eq!(text.matches("fn half_in").count(), 1);
        assert_eq!(text.matches("fn workgroup_index").count(), 1);
        assert!(text.contains("return bf16_in(word, odd);") && !text.contains("return f16_in(word, odd);"));
        assert!(text.ends_with("main\n"));
        // Inactive includes are skipped; unknown libraries are errors.
        assert!(!preprocess("t", src, &defs(&[])).unwrap().contains("workgroup_index"));
        assert!(preprocess("t", "#include nope\n", &defs(&[])).is_err());
        assert!(preprocess("t", "#include ../matmul\n", &defs(&[])).is_err());
    }
}
