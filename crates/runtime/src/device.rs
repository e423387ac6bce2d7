//! The GPU device: adapter selection, the adapter's own limits, capability flags, loss tracking,
//! buffer helpers and readback. The same code runs natively (wgpu on Vulkan/Metal/DX12) and in
//! the browser (wgpu on WebGPU).

use std::sync::{Arc, Mutex};

use crate::error::{Result, RuntimeError};
use crate::memory::{DeviceBuffer, DeviceTexture, Held, PassStart};
use crate::pipelines::Pipelines;

/// Largest workgroup any kernel may use: Chromium's `maxComputeInvocationsPerWorkgroup` is 256.
pub const MAX_WORKGROUP_INVOCATIONS: u32 = 256;

/// What kernels may rely on, read from the adapter's own limits and features.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `shader-f16` is available (f16 arithmetic and storage in WGSL).
    pub shader_f16: bool,
    /// Subgroup operations are available (natively where the adapter has them; in the browser
    /// never, see [`Pretend::subgroups`]).
    pub subgroups: bool,
    /// The fewest and most invocations a subgroup may have on this adapter (where
    /// [`Capabilities::subgroups`]; WebGPU bounds them by 4 and 128).
    pub subgroup_sizes: (u32, u32),
    /// Compute passes can write GPU timestamps (`timestamp-query`; the bench's GPU time by kind
    /// of work, [`crate::encoder::Encoder::time_dispatches`]).
    pub timestamps: bool,
    /// The adapter is a CPU implementation (lavapipe, SwiftShader, WARP; in the browser: a
    /// fallback adapter). Kernels may pick variants that avoid workgroup barriers, which such
    /// implementations run slowly.
    pub cpu: bool,
    /// Quantized weights' words go into textures, which CPU adapters load faster than storage
    /// buffers (`kernels::quant::TiledWords`), and the materialised-scores attention reads its
    /// queries, keys and per-head values from textures they are copied into
    /// (`kernels::attention`'s `OperandTextures`); on by default where [`Capabilities::cpu`] is.
    pub weight_textures: bool,
    /// The integer product reads a block of tokens' activations one word at a time for INT4
    /// weights (`kernels::quant::QMatmul::for_rows`): the faster choice on the browser's CPU
    /// adapter (Chromium's SwiftShader at the vision tower's shape: INT4 1.33 against 1.22
    /// G MAC/s, while INT8 takes four-word loads there too, 1.41 against 1.30; BENCHMARKS.md
    /// Speed XVI); everywhere else four words at a time (lavapipe: 13.0 against 10.3, Speed XV).
    pub one_word_int4_blocks: bool,
    /// Blocks of tokens of INT8 products sum their integers as f32 fmas on widened values, in
    /// chunks where that is exact (`kernels::quant::QMatmul::float_sums`): on CPU adapters, where
    /// they ran 2.7× (SwiftShader) and 1.4× (lavapipe) the `dot4I8Packed` blocks (BENCHMARKS.md,
    /// Speeds XVIII and XXII).
    pub float_block_sums: bool,
    /// Greedy decoding keeps the GPU a step ahead (`model::Generator`): it records and submits
    /// the step after a token before reading that token back, so the host's recording and the
    /// readback's round trip leave the GPU's path. On GPUs, where they are a large part of a
    /// small model's step; off on CPU adapters, whose "GPU" threads share the host's cores: there
    /// the overlap measured no faster (BENCHMARKS.md, Speed XXVII). The same tokens and logits
    /// either way.
    pub decode_ahead: bool,
    /// A decode step's row kernels work on a row in a workgroup, with workgroup memory and
    /// barriers, where that is faster than the forms CPU adapters otherwise take:
    /// - the fused rotation and quantization of a decode step's token keeps its row in workgroup
    ///   memory where it fits (`kernels::rotate_quantize`), instead of in storage: on lavapipe,
    ///   which loads storage lane by lane behind bounds checks, 2.3× and 1.7× faster at the 256M
    ///   decoder's widths (55 against 127 µs at 576, 105 against 175 µs at 1536; BENCHMARKS.md,
    ///   Speed XXXII);
    /// - a CPU adapter's norm of a few rows takes a 32-invocation workgroup per row instead of
    ///   one invocation (`kernels::norm::NormLayout::for_gpu`; Speed XXXIII).
    ///
    /// On Chromium's SwiftShader, whose barriers cost ~70 µs each, slower (the rotation 274
    /// against 225 µs, 442 against 294), so off there; on for GPUs, whose workgroup memory is on
    /// chip.
    pub workgroup_rows: bool,
    /// Largest storage-buffer binding in bytes (128 MiB on lavapipe). Tensors larger than this
    /// must be split by the kernels that read them.
    pub max_storage_binding: u64,
    /// Largest buffer in bytes.
    pub max_buffer_size: u64,
    /// Invocations per workgroup, capped at [`MAX_WORKGROUP_INVOCATIONS`].
    pub max_invocations: u32,
    pub max_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_stage: u32,
    pub max_workgroup_storage_bytes: u32,
    /// Texels along a 2-D texture's side.
    pub max_texture_side: u32,
    /// Required alignment of storage-buffer binding offsets.
    pub storage_offset_alignment: u32,
    /// Required alignment of uniform-buffer binding offsets.
    pub uniform_offset_alignment: u32,
}

/// Options for opening a device.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Pretend the device allows at most this many bytes per storage binding (tests use this to
    /// exercise the split-binding paths on devices with large limits).
    pub max_storage_binding: Option<u64>,
    /// Pretend to be another kind of adapter (tests use this to run, on one machine, the kernel
    /// variants other adapters get).
    pub pretend: Option<Pretend>,
    /// Refuse, with [`RuntimeError::OutOfMemory`], a storage buffer that would take the bytes
    /// the device holds past this many (see [`crate::memory`]); `None`: only the adapter limits.
    pub memory_budget: Option<u64>,
    /// Put quantized weights' words, and the scores attention's operands, in textures (`true`)
    /// or storage buffers (`false`) whatever the adapter ([`Capabilities::weight_textures`]);
    /// `None`: the adapter's choice. The results are the same; the bench compares the speeds.
    pub weight_textures: Option<bool>,
    /// Keep greedy decoding a step ahead (`true`) or not (`false`) whatever the adapter
    /// ([`Capabilities::decode_ahead`]); `None`: the adapter's choice. The same tokens either way.
    pub decode_ahead: Option<bool>,
}

/// Another kind of adapter, as far as kernel choice goes: a CPU implementation or a GPU, with
/// or without `shader-f16` and subgroups (each granted only where the real adapter has it). Every
/// limit becomes the lesser of the adapter's and WebGPU's defaults (`wgpu::Limits::defaults()`:
/// 16 KiB of workgroup memory, 8 storage buffers per stage, 128 MiB bindings, …), the least a
/// browser adapter offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pretend {
    pub cpu: bool,
    pub shader_f16: bool,
    /// Subgroup operations (in the browser wgpu offers none: its WebGPU backend maps no
    /// `subgroups` feature).
    pub subgroups: bool,
}

impl Capabilities {
    /// Whether workgroups reduce rows through subgroups (`shaders/lib/subgroups.wgsl`): on GPUs
    /// that have them. CPU adapters keep the reductions in workgroup memory: on lavapipe the
    /// subgroup variants measured no faster (BENCHMARKS.md, Speed XVI).
    pub fn subgroup_reductions(&self) -> bool {
        self.subgroups && !self.cpu
    }

    /// These capabilities as the adapter `pretend` describes would have them (see [`Pretend`]).
    pub fn pretending(&self, pretend: Pretend) -> Self {
        let web = wgpu::Limits::defaults();
        Self {
            shader_f16: self.shader_f16 && pretend.shader_f16,
            subgroups: self.subgroups && pretend.subgroups,
            subgroup_sizes: self.subgroup_sizes,
            timestamps: self.timestamps,
            cpu: pretend.cpu,
            weight_textures: pretend.cpu,
            one_word_int4_blocks: self.one_word_int4_blocks && pretend.cpu,
            float_block_sums: self.float_block_sums && pretend.cpu,
            decode_ahead: !pretend.cpu,
            workgroup_rows: self.workgroup_rows || !pretend.cpu,
            max_storage_binding: self.max_storage_binding.min(web.max_storage_buffer_binding_size),
            max_buffer_size: self.max_buffer_size.min(web.max_buffer_size),
            max_invocations: self.max_invocations.min(web.max_compute_invocations_per_workgroup),
            max_workgroups_per_dimension: self
                .max_workgroups_per_dimension
                .min(web.max_compute_workgroups_per_dimension),
            max_storage_buffers_per_stage: self
                .max_storage_buffers_per_stage
                .min(web.max_storage_buffers_per_shader_stage),
            max_workgroup_storage_bytes: self
                .max_workgroup_storage_bytes
                .min(web.max_compute_workgroup_storage_size),
            max_texture_side: self.max_texture_side.min(web.max_texture_dimension_2d),
            storage_offset_alignment: self
                .storage_offset_alignment
                .max(web.min_storage_buffer_offset_alignment),
            uniform_offset_alignment: self
                .uniform_offset_alignment
                .max(web.min_uniform_buffer_offset_alignment),
        }
    }
}

/// An open GPU device with its queue and capabilities.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::AdapterInfo,
    pub caps: Capabilities,
    pub pipelines: Pipelines,
    lost: Arc<Mutex<Option<String>>>,
    /// Bytes of the storage buffers alive now, their peaks, and the budget (see
    /// [`Gpu::held_bytes`]).
    held: Held,
    /// Uniform arena chunks of submitted encoders, for the next ones ([`crate::encoder`]).
    pub(crate) arena: Mutex<Vec<wgpu::Buffer>>,
    /// Kernel-internal scratch by role ([`Gpu::role_scratch`]).
    kernel_scratch: Mutex<std::collections::HashMap<&'static str, DeviceBuffer>>,
    /// Kernel-internal scratch textures by role ([`Gpu::role_texture`]).
    kernel_textures: Mutex<std::collections::HashMap<&'static str, DeviceTexture>>,
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends =
        if cfg!(target_arch = "wasm32") { wgpu::Backends::BROWSER_WEBGPU } else { wgpu::Backends::PRIMARY };
    wgpu::Instance::new(desc)
}

impl Gpu {
    /// Open the best available adapter with its own limits.
    pub async fn new(options: &DeviceOptions) -> Result<Self> {
        #[cfg(target_arch = "wasm32")]
        if !wgpu::util::is_browser_webgpu_supported().await {
            return Err(RuntimeError::NoWebGpu("navigator.gpu is missing or returned no adapter".into()));
        }
        let instance = instance();
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| RuntimeError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP | wgpu::Features::TIMESTAMP_QUERY;
        let required_features = features & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("pocketvlm"),
                required_features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| RuntimeError::RequestDevice(e.to_string()))?;

        let lost = Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = flag.lock() {
                *slot = Some(format!("{reason:?}: {message}"));
            }
        });

        let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        let cpu = info.device_type == wgpu::DeviceType::Cpu;
        // The browser's CPU adapter (SwiftShader in Chromium) gets its own loop shapes.
        let browser_cpu = cpu && info.backend == wgpu::Backend::BrowserWebGpu;
        let caps = Capabilities {
            shader_f16: required_features.contains(wgpu::Features::SHADER_F16),
            subgroups: required_features.contains(wgpu::Features::SUBGROUP),
            subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
            timestamps: required_features.contains(wgpu::Features::TIMESTAMP_QUERY),
            cpu,
            weight_textures: cpu,
            one_word_int4_blocks: browser_cpu,
            float_block_sums: cpu,
            decode_ahead: !cpu,
            workgroup_rows: !browser_cpu,
            max_storage_binding: options.max_storage_binding.map_or(max_binding, |m| m.min(max_binding)),
            max_buffer_size: limits.max_buffer_size,
            max_invocations: limits.max_compute_invocations_per_workgroup.min(MAX_WORKGROUP_INVOCATIONS),
            max_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            max_workgroup_storage_bytes: limits.max_compute_workgroup_storage_size,
            max_texture_side: limits.max_texture_dimension_2d,
            storage_offset_alignment: limits.min_storage_buffer_offset_alignment,
            uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment,
        };
        let caps = options.pretend.map_or_else(|| caps.clone(), |p| caps.pretending(p));
        let caps = Capabilities {
            weight_textures: options.weight_textures.unwrap_or(caps.weight_textures),
            decode_ahead: options.decode_ahead.unwrap_or(caps.decode_ahead),
            ..caps
        };
        Ok(Self {
            device,
            queue,
            adapter: info,
            caps,
            pipelines: Pipelines::default(),
            lost,
            held: Held::new(options.memory_budget),
            arena: Mutex::new(Vec::new()),
            kernel_scratch: Mutex::default(),
            kernel_textures: Mutex::default(),
        })
    }

    /// The compiled pipeline for `shader` with `defines` (see [`Pipelines`]).
    pub async fn pipeline(
        &self,
        shader: &'static str,
        defines: &crate::shader::Defines,
    ) -> Result<Arc<crate::pipelines::Pipeline>> {
        if let Some(pipeline) = self.pipelines.cached(shader, defines)? {
            return Ok(pipeline);
        }
        // a lost device compiles nothing; a cached pipeline's dispatch fails at submit instead
        self.check_lost()?;
        self.pipelines.compile(&self.device, shader, defines).await
    }

    /// `Err(DeviceLost)` once the device has been lost.
    pub fn check_lost(&self) -> Result<()> {
        match self.lost.lock().ok().and_then(|slot| slot.clone()) {
            Some(message) => Err(RuntimeError::DeviceLost(message)),
            None => Ok(()),
        }
    }

    /// Begin measuring a pass (the vision tower, a prefill, a decode step): see
    /// [`Gpu::pass_bytes`].
    pub fn start_pass(&self) -> PassStart {
        self.held.start_pass()
    }

    /// The most bytes of storage buffers held at once since `start` beyond what was held then:
    /// what the pass needed on top of what outlives it. Every buffer a recorded pass binds is held
    /// until the pass is submitted (kernel scratch by the [`crate::encoder::Encoder`]), so none is missed.
    pub fn pass_bytes(&self, start: PassStart) -> u64 {
        self.held.pass_bytes(start)
    }

    /// Bytes of the storage buffers alive on this device now (every clone of a
    /// [`DeviceBuffer`] dropped gives its bytes back).
    pub fn held_bytes(&self) -> u64 {
        self.held.bytes()
    }

    /// The most bytes of storage buffers held at once since the device opened or the last
    /// [`Gpu::reset_peak_held_bytes`].
    pub fn peak_held_bytes(&self) -> u64 {
        self.held.peak()
    }

    /// Start [`Gpu::peak_held_bytes`] over from what is held now.
    pub fn reset_peak_held_bytes(&self) {
        self.held.reset_peak();
    }

    /// The device's storage buffer for kernel-internal scratch `role`, of at least `bytes`
    /// bytes: one per role, grown on demand (see [`crate::encoder::Encoder::kernel_scratch`],
    /// which holds it for the work that binds it).
    pub(crate) async fn role_scratch(&self, role: &'static str, bytes: u64) -> Result<DeviceBuffer> {
        let bytes = bytes.next_multiple_of(4).max(16);
        if let Some(kept) = self.kernel_scratches().get(role).filter(|b| b.size() >= bytes) {
            return Ok(kept.clone());
        }
        // the device's reference goes first: a pass that bound the smaller one still holds it,
        // the next pass need not
        self.kernel_scratches().remove(role);
        let buffer = self.create_storage(role, bytes).await?;
        self.kernel_scratches().insert(role, buffer.clone());
        Ok(buffer)
    }

    /// Let go of the device's kernel scratch (a pass holding some keeps it until submitted):
    /// the next pass grows it again, and counts it, as the first pass on a device does.
    pub(crate) fn drop_kernel_scratch(&self) {
        self.kernel_scratches().clear();
        self.kernel_textures().clear();
    }

    /// The device's texture of 16-byte words for kernel-internal scratch `role`, `width` texels
    /// a row (a multiple of 16) and at least `texels` of them, filled by copies
    /// ([`crate::encoder::Encoder::copy_words_to_texture`]): one per role, grown on demand like
    /// [`Gpu::role_scratch`] (and replaced when asked for another width).
    pub(crate) async fn role_texture(
        &self,
        role: &'static str,
        texels: usize,
        width: u32,
    ) -> Result<DeviceTexture> {
        let rows = texels.max(1).div_ceil(width as usize) as u32;
        let kept = self.kernel_textures().get(role).cloned();
        if let Some(kept) = kept.filter(|t| t.width() == width && t.height() >= rows) {
            return Ok(kept);
        }
        self.kernel_textures().remove(role);
        let texture = self.new_words_texture(role, width, rows).await?;
        self.kernel_textures().insert(role, texture.clone());
        Ok(texture)
    }

    fn kernel_textures(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<&'static str, DeviceTexture>> {
        self.kernel_textures.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kernel_scratches(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<&'static str, DeviceBuffer>> {
        self.kernel_scratch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A storage buffer initialised with `data`, checking for out-of-memory.
    pub async fn storage_buffer(&self, label: &str, data: &[u8]) -> Result<DeviceBuffer> {
        let buffer = self.create_storage(label, data.len() as u64).await?;
        if !data.is_empty() {
            let whole = data.len() - data.len() % 4;
            self.queue.write_buffer(&buffer, 0, &data[..whole]);
            if whole < data.len() {
                let mut tail = [0u8; 4];
                tail[..data.len() - whole].copy_from_slice(&data[whole..]);
                self.queue.write_buffer(&buffer, whole as u64, &tail);
            }
        }
        Ok(buffer)
    }

    /// The width and height of [`Gpu::words_texture`]'s texture for `texels` 16-byte words,
    /// `row` a row, if the adapter's textures are that large.
    pub fn words_texture_extent(&self, texels: usize, row: u32) -> Option<(u32, u32)> {
        let texels = texels.max(1);
        // rows of whole 256-byte steps, as a texture upload needs
        let width = (texels.next_multiple_of(16) as u32).min(row);
        let height = texels.div_ceil(width as usize);
        let side = self.caps.max_texture_side as usize;
        (width as usize <= side && height <= side).then_some((width, height as u32))
    }

    /// A texture of the 16-byte words `words` (four `u32` each), `row` texels a row (`row` a
    /// multiple of 16), the last row padded with zero words; words fewer than `row` take one
    /// row of their own count rounded up to 16 instead. Held against the budget and checked for
    /// out-of-memory.
    pub async fn words_texture(&self, label: &str, words: &[u32], row: u32) -> Result<DeviceTexture> {
        self.check_lost()?;
        let texels = words.len().div_ceil(4);
        let Some((width, height)) = self.words_texture_extent(texels, row) else {
            let side = u64::from(self.caps.max_texture_side);
            return Err(RuntimeError::BindingTooLarge {
                what: format!("{label} as a texture of {texels} words, {row} a row"),
                bytes: texels as u64 * 16,
                limit: side * side * 16,
            });
        };
        let texture = self.new_words_texture(label, width, height).await?;
        let size = wgpu::Extent3d { width, height, depth_or_array_layers: 1 };
        // the whole rows straight from `words`, then the last one padded (a texture starts zeroed)
        let row_words = width as usize * 4;
        let (whole, rest) = words.split_at(words.len() / row_words * row_words);
        let mut last = rest.to_vec();
        last.resize(if rest.is_empty() { 0 } else { row_words }, 0);
        let mut y = 0;
        for part in [whole, &last[..]] {
            let rows = (part.len() / row_words) as u32;
            if rows == 0 {
                continue;
            }
            self.queue.write_texture(
                wgpu::TexelCopyTextureInfo {
                    origin: wgpu::Origin3d { x: 0, y, z: 0 },
                    ..texture.texture().as_image_copy()
                },
                bytemuck::cast_slice(part),
                wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(width * 16),
                    rows_per_image: None,
                },
                wgpu::Extent3d { height: rows, ..size },
            );
            y += rows;
        }
        Ok(texture)
    }

    /// A zeroed `rgba32uint` texture of `width` × `height` 16-byte words that kernels read and
    /// copies fill, held against the budget and checked for out-of-memory.
    async fn new_words_texture(&self, label: &str, width: u32, height: u32) -> Result<DeviceTexture> {
        let bytes = u64::from(height) * u64::from(width) * 16;
        let reservation = self.held.reserve(label, bytes)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let texture = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Uint,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        if let Some(e) = scope.pop().await {
            return Err(RuntimeError::OutOfMemory(format!("{label} ({bytes} bytes): {e}")));
        }
        Ok(DeviceTexture::new(texture, reservation))
    }

    /// A zeroed storage buffer of `size` bytes.
    pub async fn zeroed_buffer(&self, label: &str, size: u64) -> Result<DeviceBuffer> {
        self.create_storage(label, size).await
    }

    /// A storage buffer of `size` bytes (rounded up to whole words; zeroed, as WebGPU creates
    /// every buffer), held against the budget and checked for out-of-memory.
    async fn create_storage(&self, label: &str, size: u64) -> Result<DeviceBuffer> {
        self.check_lost()?;
        let size = size.next_multiple_of(4).max(4);
        let reservation = self.held.reserve(label, size)?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        if let Some(e) = scope.pop().await {
            return Err(RuntimeError::OutOfMemory(format!("{label} ({size} bytes): {e}")));
        }
        Ok(DeviceBuffer::new(buffer, reservation))
    }

    /// Copy `size` bytes of `buffer` back to the CPU.
    pub async fn read_bytes(&self, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        self.check_lost()?;
        let size = size.next_multiple_of(4);
        let staging = self.readback_buffer(size);
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        let index = self.queue.submit([encoder.finish()]);
        self.read_staged(&staging, index).await
    }

    /// A buffer of `size` bytes (a multiple of 4) to copy GPU results into and map for reading
    /// ([`Gpu::read_staged`]).
    pub fn readback_buffer(&self, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// The bytes of `staging` (a [`Gpu::readback_buffer`]) once the submission `index`, which
    /// wrote it last, has finished; work submitted after it may still run.
    pub async fn read_staged(&self, staging: &wgpu::Buffer, index: wgpu::SubmissionIndex) -> Result<Vec<u8>> {
        self.check_lost()?;
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(index), timeout: None })
            .map_err(|e| RuntimeError::Readback(e.to_string()))?;
        #[cfg(target_arch = "wasm32")]
        let _ = index;
        rx.await
            .map_err(|_| RuntimeError::Readback("the map callback was dropped".into()))?
            .map_err(|e| self.check_lost().err().unwrap_or_else(|| RuntimeError::Readback(e.to_string())))?;
        let bytes = staging.get_mapped_range(..).map_err(|e| RuntimeError::Readback(e.to_string()))?.to_vec();
        staging.unmap();
        self.check_lost()?;
        Ok(bytes)
    }

    /// Wait until all submitted GPU work has finished.
    pub async fn finish(&self) -> Result<()> {
        self.check_lost()?;
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| RuntimeError::Readback(e.to_string()))?;
        rx.await.map_err(|_| RuntimeError::Readback("the completion callback was dropped".into()))?;
        self.check_lost()
    }

    /// Wait until the work of `submitted` (and all submitted before it) has finished; work
    /// submitted after it may still run.
    pub async fn wait(&self, submitted: Submitted) -> Result<()> {
        self.check_lost()?;
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait { submission_index: Some(submitted.index), timeout: None })
            .map_err(|e| RuntimeError::Readback(e.to_string()))?;
        #[cfg(target_arch = "wasm32")]
        let _ = submitted.index;
        submitted
            .done
            .await
            .map_err(|_| RuntimeError::Readback("the completion callback was dropped".into()))?;
        self.check_lost()
    }

    /// Read `len` f32 values back.
    pub async fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buffer, (len * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[..len * 4]))
    }
}

/// Work handed to the queue by [`Gpu::submit_tracked`], to wait for with [`Gpu::wait`].
pub struct Submitted {
    pub(crate) index: wgpu::SubmissionIndex,
    /// Fires once the queue has finished everything submitted up to this work.
    pub(crate) done: futures_channel::oneshot::Receiver<()>,
}

#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    /// `performance.now()` of the page or worker (microsecond-class resolution, coarsened by the
    /// browser; `Date.now()` has whole milliseconds, too coarse for one dispatch's recording).
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

/// Milliseconds since an arbitrary origin (`performance.now()` in the browser).
pub fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        performance_now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
    }
}
