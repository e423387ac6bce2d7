//! Crossing into JavaScript: typed errors as `Error` objects, Rust values as plain objects.

use serde::Serialize;
use wasm_bindgen::{JsCast, JsValue};

use crate::errors::WebError;

/// A Rust value as a plain JavaScript object (maps as objects, 64-bit integers as numbers).
pub fn to_js<T: Serialize>(value: &T) -> JsValue {
    value.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).unwrap_or(JsValue::UNDEFINED)
}

/// An `Error` whose `name` is the error class and which carries the class's fields.
pub fn error(e: WebError) -> JsValue {
    let error = js_sys::Error::new(&e.message);
    error.set_name(e.name);
    if let Ok(fields) = to_js(&e).dyn_into::<js_sys::Object>() {
        for entry in js_sys::Object::entries(&fields).iter() {
            let pair: js_sys::Array = entry.unchecked_into();
            let _ = js_sys::Reflect::set(&error, &pair.get(0), &pair.get(1));
        }
    }
    error.into()
}
