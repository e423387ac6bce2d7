//! Compute pipelines, compiled once per (shader, defines) and cached with their bind group
//! layout (asking a pipeline for its layout is a call into the browser per dispatch otherwise).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Result, RuntimeError};
use crate::shader::{Defines, preprocess, source};

type Key = (&'static str, Defines);

/// A compiled kernel variant and the layout of its bind group 0.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Cache of compiled pipelines keyed by shader name and defines.
#[derive(Default)]
pub struct Pipelines {
    cache: Mutex<HashMap<Key, Arc<Pipeline>>>,
}

impl Pipelines {
    /// The pipeline for `shader` with `defines`, if it was compiled already.
    pub fn cached(&self, shader: &'static str, defines: &Defines) -> Result<Option<Arc<Pipeline>>> {
        let key = (shader, defines.clone());
        Ok(self.cache.lock().map_err(|_| poisoned())?.get(&key).cloned())
    }

    /// Compile the pipeline for `shader` with `defines` on `device` and keep it.
    /// Compilation errors are returned as [`RuntimeError::Shader`].
    pub async fn compile(
        &self,
        device: &wgpu::Device,
        shader: &'static str,
        defines: &Defines,
    ) -> Result<Arc<Pipeline>> {
        let text = preprocess(shader, source(shader)?, defines)?;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader),
            source: wgpu::ShaderSource::Wgsl(text.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(shader),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = scope.pop().await {
            return Err(RuntimeError::Shader { shader: shader.to_string(), message: e.to_string() });
        }
        let layout = pipeline.get_bind_group_layout(0);
        let pipeline = Arc::new(Pipeline { pipeline, layout });
        self.cache.lock().map_err(|_| poisoned())?.insert((shader, defines.clone()), pipeline.clone());
        Ok(pipeline)
    }

    /// Every (shader, defines) compiled so far, sorted.
    pub fn compiled(&self) -> Vec<(&'static str, Defines)> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<Key> = cache.keys().cloned().collect();
        keys.sort();
        keys
    }
}

fn poisoned() -> RuntimeError {
    RuntimeError::Validation("pipeline cache lock poisoned".into())
}
