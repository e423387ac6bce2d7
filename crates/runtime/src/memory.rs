//! What a device holds: every storage buffer is a [`DeviceBuffer`] (every texture of words a
//! [`DeviceTexture`]) whose bytes count as held on its device while any clone of it lives, and a
//! device opened with a memory budget ([`crate::DeviceOptions::memory_budget`]) refuses, with
//! [`RuntimeError::OutOfMemory`], a buffer or texture that would take what it holds past the
//! budget.
//!
//! The budget is the page's (or caller's) own cap, checked before wgpu is asked; the adapter's
//! real out-of-memory errors are still caught by the error scope around each creation. Uniform
//! arena chunks, query sets and readback staging buffers are small and not counted.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, RuntimeError};

/// A storage buffer and its share of the device's held bytes.
#[derive(Clone, Debug)]
pub struct DeviceBuffer {
    buffer: wgpu::Buffer,
    _held: Arc<Reservation>,
}

impl DeviceBuffer {
    pub(crate) fn new(buffer: wgpu::Buffer, reservation: Reservation) -> Self {
        Self { buffer, _held: Arc::new(reservation) }
    }
}

impl Deref for DeviceBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

/// A texture of 16-byte words (`rgba32uint`, one word a texel, row-major: a weight's,
/// [`crate::Gpu::words_texture`], or kernel scratch that copies fill) and its share of the
/// device's held bytes.
#[derive(Clone, Debug)]
pub struct DeviceTexture {
    pub view: wgpu::TextureView,
    /// Bytes of the texture (its last row padded).
    pub bytes: u64,
    texture: wgpu::Texture,
    _held: Arc<Reservation>,
}

impl DeviceTexture {
    pub(crate) fn new(texture: wgpu::Texture, reservation: Reservation) -> Self {
        let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
        let bytes = reservation.bytes;
        Self { view, bytes, texture, _held: Arc::new(reservation) }
    }

    pub(crate) fn texture(&self) -> &wgpu::Texture {
        &self.texture
    }

    /// Texels a row.
    pub fn width(&self) -> u32 {
        self.texture.width()
    }

    /// Rows.
    pub fn height(&self) -> u32 {
        self.texture.height()
    }
}

/// Bytes held on a device until dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    bytes: u64,
    held: Arc<AtomicU64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The bytes a device holds, the most it held since [`Held::reset_peak`] and since the pass that
/// began last ([`Held::start_pass`]), and the most it may hold.
#[derive(Debug, Default)]
pub(crate) struct Held {
    bytes: Arc<AtomicU64>,
    peak: AtomicU64,
    pass_peak: AtomicU64,
    budget: Option<u64>,
}

/// What a device held when a pass began ([`crate::Gpu::start_pass`]).
#[derive(Clone, Copy, Debug)]
pub struct PassStart(u64);

impl Held {
    pub fn new(budget: Option<u64>) -> Self {
        Self { bytes: Arc::default(), peak: AtomicU64::new(0), pass_peak: AtomicU64::new(0), budget }
    }

    /// Begin a pass: [`Held::pass_bytes`] then tells the most bytes held at once during it above
    /// what is held now. Passes on one device follow each other (one that begins ends the
    /// measure of the one before).
    pub fn start_pass(&self) -> PassStart {
        let now = self.bytes();
        self.pass_peak.store(now, Ordering::Relaxed);
        PassStart(now)
    }

    /// The most bytes held at once since `start`, above what was held then.
    pub fn pass_bytes(&self, start: PassStart) -> u64 {
        self.pass_peak.load(Ordering::Relaxed).saturating_sub(start.0)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The most bytes held at once since the last [`Held::reset_peak`].
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Start the peak over from what is held now.
    pub fn reset_peak(&self) {
        self.peak.store(self.bytes(), Ordering::Relaxed);
    }

    /// Hold `bytes` more for `label`, unless that takes the device past its budget.
    pub fn reserve(&self, label: &str, bytes: u64) -> Result<Reservation> {
        let taken = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            let after = held.checked_add(bytes)?;
            self.budget.is_none_or(|budget| after <= budget).then_some(after)
        });
        match taken {
            Ok(before) => {
                self.peak.fetch_max(before + bytes, Ordering::Relaxed);
                self.pass_peak.fetch_max(before + bytes, Ordering::Relaxed);
                Ok(Reservation { bytes, held: self.bytes.clone() })
            }
            Err(held) => Err(RuntimeError::OutOfMemory(format!(
                "{label} ({bytes} bytes): the device holds {held} bytes of its {} byte budget",
                self.budget.unwrap_or(u64::MAX)
            ))),
        }
    }
}
