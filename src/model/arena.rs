//! A rank's activation buffers, kept from one forward step to the next: each
//! step resizes them to its token count ([`Backend::resize`]), which keeps
//! their storage where it is large enough, so the ops of a step neither
//! allocate nor clear their outputs (on a GPU, a zero-fill is a kernel launch
//! per op). The storage stays at the largest step run so far, the
//! activation peak the KV cache sizing already set aside.

use crate::backend::Backend;
use crate::error::Result;

/// The buffers [`super::Model::forward`] writes, by the role they play in a layer.
pub struct StepArena<B: Backend> {
    pub(super) hidden: B::Buffer,
    pub(super) residual: B::Buffer,
    pub(super) qkv: B::Buffer,
    pub(super) attn_out: B::Buffer,
    pub(super) gate_up: B::Buffer,
    pub(super) act: B::Buffer,
    /// The rows of the final hidden state that the LM head turns into logits.
    pub(super) selected: B::Buffer,
    /// A tensor-parallel rank's vocabulary slice of the logits, before the
    /// gather (f32, as logits are; made by the first step that needs it).
    pub(super) local_logits: Option<B::Buffer>,
    /// A step's logits leave the step; the caller may hand them back for the
    /// next step's (a fresh `[rows, vocab]` buffer at a large batch is tens of
    /// MB of newly mapped pages on the CPU, each step).
    pub(super) spare_logits: Option<B::Buffer>,
}

impl<B: Backend> StepArena<B> {
    /// Empty buffers: the first step sizes them.
    pub fn new(be: &B) -> Result<StepArena<B>> {
        Ok(StepArena {
            hidden: be.alloc(0)?,
            residual: be.alloc(0)?,
            qkv: be.alloc(0)?,
            attn_out: be.alloc(0)?,
            gate_up: be.alloc(0)?,
            act: be.alloc(0)?,
            selected: be.alloc(0)?,
            local_logits: None,
            spare_logits: None,
        })
    }

    /// Every buffer, for tests that spoil their contents between steps.
    #[cfg(test)]
    pub(super) fn buffers_mut(&mut self) -> [&mut B::Buffer; 7] {
        [
            &mut self.hidden,
            &mut self.residual,
            &mut self.qkv,
            &mut self.attn_out,
            &mut self.gate_up,
            &mut self.act,
            &mut self.selected,
        ]
    }
}
