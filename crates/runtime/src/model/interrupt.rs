//! Long passes in parts, so that a caller can stop them: the vision tower and a prompt's prefill
//! take minutes on a software adapter.
//!
//! A pass records its work into one encoder and calls [`Interrupt::point`] between its parts
//! (each half of a vision layer, each decoder layer of a prefill). Without a [`Stop`] that does
//! nothing: the pass stays one command buffer. With one, the work recorded so far is submitted, the
//! part submitted at the point before is awaited (so the GPU runs one part while the host records
//! the next), and the stop is asked: `true` ends the pass with [`RuntimeError::Aborted`]. A stop
//! asked for while part `k` runs is seen once part `k` has finished, so the pass ends within two
//! parts; work already submitted runs to its end (later work queues behind it), and nothing the
//! pass wrote is kept (see `Engine::resume`).

use std::fmt;
use std::rc::Rc;

use crate::device::{Gpu, Submitted};
use crate::encoder::{Encoder, GpuTimings, RecordProfile};
use crate::error::{Result, RuntimeError};

/// The caller's "stop now", asked between the parts of a long pass (in the browser, an
/// `AbortSignal`'s `aborted`).
#[derive(Clone, Default)]
pub struct Stop(Option<Rc<dyn Fn() -> bool>>);

impl Stop {
    /// A pass that runs to its end (one command buffer).
    pub fn never() -> Self {
        Self(None)
    }

    /// Stop once `requested` returns true.
    pub fn when(requested: impl Fn() -> bool + 'static) -> Self {
        Self(Some(Rc::new(requested)))
    }

    /// Whether a stop is requested now.
    pub fn requested(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f())
    }
}

impl fmt::Debug for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Stop::when(..)" } else { "Stop::never()" })
    }
}

/// The parts of one pass submitted so far (see the module documentation).
pub struct Interrupt<'a> {
    /// `None` when the pass is never stopped.
    stop: Option<&'a Stop>,
    /// What the pass is, for the error.
    what: &'static str,
    /// The part submitted at the last point, not yet awaited.
    in_flight: Option<Submitted>,
    /// Timestamps of the submitted parts' timed dispatches.
    timings: Vec<GpuTimings>,
    /// Points passed.
    points: usize,
}

impl<'a> Interrupt<'a> {
    pub fn new(stop: &'a Stop, what: &'static str) -> Self {
        let stop = stop.0.is_some().then_some(stop);
        Self { stop, what, in_flight: None, timings: Vec::new(), points: 0 }
    }

    /// The points of a pass that is never stopped (one command buffer): a decode step.
    pub fn never() -> Self {
        Self { stop: None, what: "", in_flight: None, timings: Vec::new(), points: 0 }
    }

    /// A point between two parts of the pass recorded into `encoder`.
    pub async fn point(&mut self, gpu: &Gpu, encoder: &mut Encoder) -> Result<()> {
        let Some(stop) = self.stop else {
            return Ok(());
        };
        self.points += 1;
        let (part, timings) = encoder.split_off(gpu);
        self.timings.extend(timings);
        let previous = self.in_flight.replace(gpu.submit_tracked(part));
        if let Some(previous) = previous {
            gpu.wait(previous).await?;
            encoder.charge_idle("(waiting for the previous part)");
        }
        if stop.requested() {
            return Err(RuntimeError::Aborted(format!("{} (after {} parts)", self.what, self.points)));
        }
        Ok(())
    }

    /// Submit the pass's last part; its GPU time by kind of work when its dispatches were timed
    /// (else empty), read once all parts have run.
    pub async fn finish(mut self, gpu: &Gpu, mut encoder: Encoder) -> Result<RecordProfile> {
        self.timings.extend(encoder.finish_timing(gpu));
        gpu.submit(encoder);
        let mut profile = RecordProfile::default();
        for timings in &self.timings {
            profile.add(&timings.read(gpu).await?);
        }
        Ok(profile)
    }
}
