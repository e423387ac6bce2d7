//! Recording GPU work with little host overhead per dispatch.
//!
//! An [`Encoder`] wraps a command encoder. Every dispatch's parameters go into a uniform arena
//! instead of a buffer each: slots at the device's uniform offset alignment in 64 KiB chunks,
//! each chunk written to the GPU with one `write_buffer` when the encoder is submitted (queue
//! writes take effect after the work submitted before them and before the work submitted after
//! them). Submitted chunks go back to the device's pool in order, so the next encoder lays out its
//! parameters in the same chunks at the same offsets. Consecutive dispatches share one compute
//! pass (a copy ends it), and dispatches are counted, so the bench can report them per decode token.
//!
//! An encoder made with [`Gpu::encoder_reusing`] looks its bind groups up in a [`BindGroups`]
//! cache first: a generation's decode steps record the same dispatches over the same persistent
//! buffers and arena slots each step, so after the first step they build no bind group (in the
//! browser, building one is a JS call with an object per entry).
//!
//! An encoder can also charge the host time it spends to the kinds of work it records
//! ([`Encoder::profile_from_now`]): each dispatch's label (or "copy") is charged the time since
//! the previous dispatch or copy ended — the op's checks, its pipeline lookup and the recording
//! calls — so the bench can say which ops a decode step's recording time goes to.
//!
//! Where the device has `timestamp-query`, an encoder can also time each dispatch on the GPU
//! ([`Encoder::time_dispatches`]): every dispatch then gets a compute pass of its own whose
//! beginning and end write timestamps, resolved into a buffer when the encoder is submitted
//! ([`GpuTimings`]). The time between one pass's end and the next one's beginning is the
//! adapter's cost of starting a dispatch (on CPU adapters: waking and joining its threads).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::device::{Gpu, Submitted, now_ms};
use crate::memory::{DeviceBuffer, DeviceTexture};
use crate::pipelines::Pipeline;

/// Bytes of one uniform arena chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// Entries kept by a [`BindGroups`] cache before it starts over (a decode step binds what the
/// step before bound, caches over their capacity, so a generation adds entries only on its first
/// step and when its cache grows; the bound keeps a pathological caller from growing it forever).
const MAX_BIND_GROUPS: usize = 16 * 1024;

/// What a bind group binds: the pipeline (its address in the pipeline cache, which never drops
/// one) and each binding, the uniform slot first.
type BindKey = (usize, Vec<Bound>);

/// One binding of a bind group: a buffer's range or a texture view.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Bound {
    Buffer(wgpu::Buffer, u64, Option<wgpu::BufferSize>),
    Texture(wgpu::TextureView),
}

/// Bind groups by what they bind, shared by the encoders of one generation.
#[derive(Default)]
pub struct BindGroups {
    groups: HashMap<BindKey, wgpu::BindGroup>,
    /// Dispatches that found their bind group here.
    pub hits: usize,
    /// Bind groups built for the cache (a lookup that missed).
    pub built: usize,
    /// Host milliseconds spent building them.
    pub build_ms: f64,
}

/// Host time charged to one kind of recorded work.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KindCost {
    /// Dispatches (or copies) of this kind.
    pub count: usize,
    /// Host milliseconds charged to them.
    pub ms: f64,
}

/// Host recording time by kind of work: dispatch labels, "copy" for buffer copies and "(tail)"
/// for the time after the last of them until the profile was taken.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordProfile {
    pub kinds: BTreeMap<String, KindCost>,
}

impl RecordProfile {
    /// Add `other`'s counts and times to this profile's.
    pub fn add(&mut self, other: &RecordProfile) {
        for (kind, cost) in &other.kinds {
            let mine = self.kinds.entry(kind.clone()).or_default();
            mine.count += cost.count;
            mine.ms += cost.ms;
        }
    }

    fn charge(&mut self, kind: &str, ms: f64) {
        let cost = match self.kinds.get_mut(kind) {
            Some(cost) => cost,
            None => self.kinds.entry(kind.to_string()).or_default(),
        };
        cost.count += 1;
        cost.ms += ms;
    }
}

/// Timestamps written by most this many dispatches of one encoder (WebGPU allows 4096 queries
/// per set, two per dispatch); later dispatches run untimed and are counted as such.
const MAX_TIMED_DISPATCHES: usize = 2048;

/// The dispatches of one encoder being timed: their query set and labels, in order.
struct DispatchTimer {
    queries: wgpu::QuerySet,
    labels: Vec<String>,
    untimed: usize,
}

/// An encoder's dispatch timestamps on their way back from the GPU: resolved into `resolved`
/// by the submitted work, read with [`GpuTimings::read`] after it.
pub struct GpuTimings {
    resolved: wgpu::Buffer,
    labels: Vec<String>,
    untimed: usize,
}

impl GpuTimings {
    /// GPU time by label, plus "(between dispatches)": the gaps from each pass's end to the
    /// next one's beginning, and "(untimed)" with the count of dispatches past the query set.
    pub async fn read(&self, gpu: &Gpu) -> crate::error::Result<RecordProfile> {
        let n = self.labels.len();
        let bytes = gpu.read_bytes(&self.resolved, (n * 16) as u64).await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes[..n * 16]);
        let ns_per_tick = f64::from(gpu.queue.get_timestamp_period());
        let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 * ns_per_tick * 1e-6;
        let mut profile = RecordProfile::default();
        for (i, label) in self.labels.iter().enumerate() {
            profile.charge(label, ms(ticks[2 * i], ticks[2 * i + 1]));
            if i > 0 {
                profile.charge("(between dispatches)", ms(ticks[2 * i - 1], ticks[2 * i]));
            }
        }
        if self.untimed > 0 {
            let cost = profile.kinds.entry("(untimed)".into()).or_default();
            cost.count += self.untimed;
        }
        Ok(profile)
    }
}

/// A command encoder with its uniform arena and an open compute pass. Make one with
/// [`Gpu::encoder`], submit it with [`Gpu::submit`].
pub struct Encoder {
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: wgpu::CommandEncoder,
    /// Arena chunks and the bytes staged for each.
    chunks: Vec<(wgpu::Buffer, Vec<u8>)>,
    dispatches: usize,
    bind_groups: Option<Arc<Mutex<BindGroups>>>,
    /// The time the last charged work ended and the profile so far, when profiling.
    profile: Option<(f64, RecordProfile)>,
    /// Timestamps of each dispatch, when timing them on the GPU.
    timer: Option<DispatchTimer>,
    /// Device buffers the recorded work binds that nothing else is sure to keep until it is
    /// submitted (kernel scratch, [`Encoder::kernel_scratch`]): held, and counted, until then.
    held: Vec<DeviceBuffer>,
    /// Kernel scratch textures the recorded copies fill ([`Encoder::copy_words_to_texture`]),
    /// held likewise.
    held_textures: Vec<DeviceTexture>,
}

impl Encoder {
    fn new(gpu: &Gpu, bind_groups: Option<Arc<Mutex<BindGroups>>>) -> Self {
        let encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        Self {
            pass: None,
            encoder,
            chunks: Vec::new(),
            dispatches: 0,
            bind_groups,
            profile: None,
            timer: None,
            held: Vec::new(),
            held_textures: Vec::new(),
        }
    }

    /// A storage buffer of at least `bytes` bytes that a kernel recorded here uses internally
    /// for `role` and initializes before reading on every call (e.g. attention's running softmax
    /// state between key passes): one per role for the device, grown on demand, so repeated
    /// calls (every layer of every decode step) allocate nothing and bind the same buffer. Calls
    /// run in submission order, so sharing it between them is safe. This encoder holds the
    /// buffer until it is submitted, so a smaller one that a larger replaced while the pass
    /// still binds it stays counted as held until then.
    pub async fn kernel_scratch(
        &mut self,
        gpu: &Gpu,
        role: &'static str,
        bytes: u64,
    ) -> crate::error::Result<DeviceBuffer> {
        let buffer = gpu.role_scratch(role, bytes).await?;
        self.hold(&buffer);
        Ok(buffer)
    }

    /// Keep `buffer` (and its bytes counted as held) until this encoder is submitted or dropped.
    pub fn hold(&mut self, buffer: &DeviceBuffer) {
        if !self.held.iter().any(|b| **b == **buffer) {
            self.held.push(buffer.clone());
        }
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
        let build = || {
            gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout: &pipeline.layout,
                entries: &entries,
            })
        };
        let bind_group = match self.bind_groups.as_ref().and_then(|c| c.lock().ok()) {
            Some(mut cache) => match bind_key(pipeline, &entries) {
                Some(key) => {
                    if let Some(group) = cache.groups.get(&key).cloned() {
                        cache.hits += 1;
                        group
                    } else {
                        if cache.groups.len() >= MAX_BIND_GROUPS {
                            cache.groups.clear();
                        }
                        let t0 = now_ms();
                        let group = build();
                        cache.built += 1;
                        cache.build_ms += now_ms() - t0;
                        cache.groups.insert(key, group.clone());
                        group
                    }
                }
                None => build(),
            },
            None => build(),
        };
        let timed = self.timer.as_mut().and_then(|t| {
            if t.labels.len() < MAX_TIMED_DISPATCHES {
                t.labels.push(label.to_string());
                Some((&t.queries, 2 * t.labels.len() as u32 - 2))
            } else {
                t.untimed += 1;
                None
            }
        });
        if let Some((query_set, first)) = timed {
            // A pass of its own, closed after this dispatch.
            let writes = wgpu::ComputePassTimestampWrites {
                query_set,
                beginning_of_pass_write_index: Some(first),
                end_of_pass_write_index: Some(first + 1),
            };
            let desc = wgpu::ComputePassDescriptor { label: Some(label), timestamp_writes: Some(writes) };
            self.pass = None;
            self.pass = Some(self.encoder.begin_compute_pass(&desc).forget_lifetime());
        }
        let pass = self.pass.get_or_insert_with(|| {
            let desc = wgpu::ComputePassDescriptor { label: Some("pocketvlm"), timestamp_writes: None };
            self.encoder.begin_compute_pass(&desc).forget_lifetime()
        });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups.0, workgroups.1, workgroups.2);
        if timed.is_some() {
            self.pass = None;
        }
        self.dispatches += 1;
        self.charge(label);
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
        self.charge("copy");
    }

    /// Copy `vec4s` 16-byte words of `src` from byte `offset` (a multiple of 16) into texture
    /// `dst` from its first texel, row-major (ends the open compute pass).
    pub fn copy_words_to_texture(
        &mut self,
        src: &wgpu::Buffer,
        offset: u64,
        vec4s: u32,
        dst: &DeviceTexture,
    ) {
        self.pass = None;
        let width = dst.width();
        let (whole, rest) = (vec4s / width, vec4s % width);
        // the whole rows, then the last one's words
        for (y, rows, texels) in [(0, whole, width), (whole, u32::from(rest > 0), rest)] {
            if rows == 0 {
                continue;
            }
            self.encoder.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo {
                    buffer: src,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: offset + u64::from(y) * u64::from(width) * 16,
                        bytes_per_row: Some(width * 16),
                        rows_per_image: None,
                    },
                },
                wgpu::TexelCopyTextureInfo {
                    origin: wgpu::Origin3d { x: 0, y, z: 0 },
                    ..dst.texture().as_image_copy()
                },
                wgpu::Extent3d { width: texels, height: rows, depth_or_array_layers: 1 },
            );
        }
        if !self.held_textures.iter().any(|t| t.view == dst.view) {
            self.held_textures.push(dst.clone());
        }
        self.charge("copy");
    }

    /// Start charging host time to the kinds of work recorded from now on (see the module
    /// documentation); restarts a profile already running.
    pub fn profile_from_now(&mut self) {
        self.profile = Some((now_ms(), RecordProfile::default()));
    }

    /// The profile since [`Encoder::profile_from_now`], the time since the last recorded work
    /// charged to "(tail)"; profiling stops.
    pub fn take_profile(&mut self) -> Option<RecordProfile> {
        self.charge("(tail)");
        self.profile.take().map(|(_, profile)| profile)
    }

    /// Time each dispatch recorded from now on on the GPU, in a compute pass of its own (see the
    /// module documentation); false, and nothing changes, where the device cannot write
    /// timestamps.
    pub fn time_dispatches(&mut self, gpu: &Gpu) -> bool {
        if !gpu.caps.timestamps {
            return false;
        }
        let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("dispatch timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * MAX_TIMED_DISPATCHES as u32,
        });
        self.timer = Some(DispatchTimer { queries, labels: Vec::new(), untimed: 0 });
        true
    }

    /// Resolve the timestamps of the dispatches timed so far (recorded into this encoder: submit
    /// it, then [`GpuTimings::read`]); `None` when none were timed.
    pub fn finish_timing(&mut self, gpu: &Gpu) -> Option<GpuTimings> {
        let timer = self.timer.take()?;
        let n = timer.labels.len();
        if n == 0 {
            return None;
        }
        self.pass = None;
        let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("resolved timestamps"),
            size: (n * 16) as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        self.encoder.resolve_query_set(&timer.queries, 0..2 * n as u32, &resolved, 0);
        Some(GpuTimings { resolved, labels: timer.labels, untimed: timer.untimed })
    }

    fn charge(&mut self, kind: &str) {
        if let Some((last, profile)) = &mut self.profile {
            let now = now_ms();
            profile.charge(kind, now - *last);
            *last = now;
        }
    }

    /// Hand the work recorded so far over in an encoder of its own (with the timestamps of its
    /// timed dispatches, resolved into it) and carry on empty, in the same modes: the same
    /// bind-group cache, the host profile continuing, dispatches timed if they were.
    pub fn split_off(&mut self, gpu: &Gpu) -> (Encoder, Option<GpuTimings>) {
        let timed = self.timer.is_some();
        let timings = self.finish_timing(gpu);
        let mut next = Encoder::new(gpu, self.bind_groups.clone());
        next.profile = self.profile.take();
        next.dispatches = self.dispatches;
        if timed {
            next.time_dispatches(gpu);
        }
        (std::mem::replace(self, next), timings)
    }

    /// Charge the host time since the last recorded work to `kind` (when profiling): time spent
    /// between two dispatches that belongs to neither, such as waiting for the GPU.
    pub fn charge_idle(&mut self, kind: &str) {
        self.charge(kind);
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
            let pooled = gpu.arena.lock().ok().and_then(|mut pool| pool.pop());
            let buffer = pooled.unwrap_or_else(|| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("uniform arena"),
                    size: CHUNK_BYTES as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
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
}

/// The cache key of a bind group whose entries are all buffer ranges and texture views.
fn bind_key(pipeline: &Pipeline, entries: &[wgpu::BindGroupEntry<'_>]) -> Option<BindKey> {
    let bindings = entries
        .iter()
        .map(|e| match &e.resource {
            wgpu::BindingResource::Buffer(b) => Some(Bound::Buffer(b.buffer.clone(), b.offset, b.size)),
            wgpu::BindingResource::TextureView(v) => Some(Bound::Texture((*v).clone())),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((std::ptr::from_ref(pipeline) as usize, bindings))
}

impl Gpu {
    /// A new [`Encoder`].
    pub fn encoder(&self) -> Encoder {
        Encoder::new(self, None)
    }

    /// A new [`Encoder`] that reuses the bind groups in `cache` (see the module documentation).
    pub fn encoder_reusing(&self, cache: &Arc<Mutex<BindGroups>>) -> Encoder {
        Encoder::new(self, Some(cache.clone()))
    }

    /// Submit `encoder`'s work, its uniform arena written first; its chunks go back to the pool.
    pub fn submit(&self, mut encoder: Encoder) -> wgpu::SubmissionIndex {
        encoder.pass = None;
        for (buffer, data) in &encoder.chunks {
            self.queue.write_buffer(buffer, 0, data);
        }
        let index = self.queue.submit([encoder.encoder.finish()]);
        if let Ok(mut pool) = self.arena.lock() {
            pool.extend(encoder.chunks.into_iter().rev().map(|(buffer, _)| buffer));
        }
        index
    }

    /// [`Gpu::submit`], and a handle to wait for that work with [`Gpu::wait`].
    pub fn submit_tracked(&self, encoder: Encoder) -> Submitted {
        let index = self.submit(encoder);
        let (tx, done) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        Submitted { index, done }
    }
}
