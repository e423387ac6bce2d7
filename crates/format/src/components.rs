//! Grouping tensors into the model's components, for size reports.

use std::fmt;

use crate::manifest::Manifest;

/// A part of the model, as reported in size tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Vision,
    Connector,
    Embeddings,
    Decoder,
    LmHead,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Vision,
        Component::Connector,
        Component::Embeddings,
        Component::Decoder,
        Component::LmHead,
    ];

    /// The component a tensor belongs to, from its name.
    pub fn of(name: &str) -> Component {
        if name.starts_with("model.vision_model.") {
            Component::Vision
        } else if name.starts_with("model.connector.") {
            Component::Connector
        } else if name.starts_with("model.text_model.embed_tokens.") {
            Component::Embeddings
        } else if name.starts_with("lm_head.") {
            Component::LmHead
        } else {
            Component::Decoder
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Component::Vision => "vision",
            Component::Connector => "connector",
            Component::Embeddings => "embeddings",
            Component::Decoder => "decoder",
            Component::LmHead => "lm_head",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parameters and stored bytes of one component.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ComponentSize {
    pub params: u64,
    pub bytes: u64,
}

impl Manifest {
    /// Parameters and bytes per component, in [`Component::ALL`] order.
    pub fn component_sizes(&self) -> Vec<(Component, ComponentSize)> {
        Component::ALL
            .iter()
            .map(|&c| {
                let mut size = ComponentSize::default();
                for t in self.tensors.iter().filter(|t| Component::of(&t.name) == c) {
                    size.params += t.numel() as u64;
                    size.bytes += t.bytes;
                }
                (c, size)
            })
            .collect()
    }
}
