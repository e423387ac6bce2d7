//! Recording GPU work with little host overhead per dispatch.
//!
//! An [`Encoder`] wraps a command encoder. Every dispatch's parameters go into a uniform arena
//! instead of a buffer each: slots at the device's uniform offset alignment in 64 KiB chunks,
//! each chunk written to the GPU with one `write_buffer` when the encoder is submitted (queue
//! writes take effect before the command buffers submitted after them). Consecutive dispatches
//! share one compute pass (a copy ends it), and dispatches are counted, so the bench can report
//! them per decode token.

use crate::device::Gpu;
use crate::pipelines::Pipeline;

/// Bytes of one uniform arena chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// A command encoder with its uniform arena and an open compute pass. Make one with
/// [`Gpu::encoder`], submit it with [`Gpu::submit`].
pub struct Encoder {
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: wgpu::CommandEncoder,
    /// Arena chunks and the bytes staged for each.
    chunks: Vec<(wgpu::Buffer, Vec<u8>)>,
    dispatches: usize,
}

impl Encoder {
    pub(crate) fn new(gpu: &Gpu) -> Self {
        let encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        Self { pass: None, encoder, chunks: Vec::new(), dispatches: 0 }
    }

    /// Record one dispatch of `pipeline`: `params` as the uniform at binding 0 and `resources` at
    /// bindings 1, 2, ….
    pub fn dispatch(
        &mut self,
        gpu: &Gpu,
        pipeline: &Pipeline,
        label: &str,
        params: &[u8],
        resources: Vec<wgpu::BindingResource<'_>>,
        workgroups: (u32, u32, u32),
    ) {
        let (buffer, offset) = self.uniform_slot(gpu, params);
        let size = wgpu::BufferSize::new(params.len().max(4) as u64);
        let uniform = wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &buffer, offset, size });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform }];
        for (i, resource) in resources.into_iter().enumerate() {
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource });
        }
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &pipeline.layout,
            entries: &entries,
        });
        let pass = self.pass.get_or_insert_with(|| {
            let desc = wgpu::ComputePassDescriptor { label: Some("pocketvlm"), timestamp_writes: None };
            self.encoder.begin_compute_pass(&desc).forget_lifetime()
        });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups.0, workgroups.1, workgroups.2);
        self.dispatches += 1;
    }

    /// Copy `size` bytes between buffers (ends the open compute pass).
    pub fn copy_buffer_to_buffer(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) {
        self.pass = None;
        self.encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, size);
    }

    /// Dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }

    /// Stage `params` in the arena: the chunk and byte offset of its slot.
    fn uniform_slot(&mut self, gpu: &Gpu, params: &[u8]) -> (wgpu::Buffer, u64) {
        let align = gpu.caps.uniform_offset_alignment.max(4) as usize;
        let len = params.len().max(4).next_multiple_of(4);
        let fits = |data: &Vec<u8>| data.len().next_multiple_of(align) + len <= CHUNK_BYTES;
        if !self.chunks.last().is_some_and(|(_, data)| fits(data)) {
            let buffer = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("uniform arena"),
                size: CHUNK_BYTES as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.chunks.push((buffer, Vec::with_capacity(CHUNK_BYTES)));
        }
        let (buffer, data) = self.chunks.last_mut().expect("a chunk was just ensured");
        let offset = data.len().next_multiple_of(align);
        data.resize(offset, 0);
        data.extend_from_slice(params);
        data.resize(offset + len, 0);
        (buffer.clone(), offset as u64)
    }

    /// End the pass, write the arena and finish the command buffer.
    fn finish(mut self, gpu: &Gpu) -> wgpu::CommandBuffer {
        self.pass = None;
        for (buffer, data) in &self.chunks {
            gpu.queue.write_buffer(buffer, 0, data);
        }
        self.encoder.finish()
    }
}

impl Gpu {
    /// A new [`Encoder`].
    pub fn encoder(&self) -> Encoder {
        Encoder::new(self)
    }

    /// Submit `encoder`'s work (its uniform arena written first).
    pub fn submit(&self, encoder: Encoder) {
        let commands = encoder.finish(self);
        self.queue.submit([commands]);
    }
}
