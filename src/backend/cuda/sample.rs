//! The batched sampling op on the GPU: the step's rows gathered out of the
//! logits, then penalties → bitmask → temperature → top-k/top-p/min-p →
//! log_softmax → argmax or a Philox draw → the chosen token's logprob and rank
//! → top-N (csrc/sampling.cu); only ids, logprobs and ranks come back. A batch
//! of greedy rows without top logprobs takes one fused kernel after the
//! processors instead (csrc/greedy.cu).
//!
//! A row's logit bias and `min_tokens` masking (sparse adds, then masked ids)
//! are applied first, before the penalties, as on the host. The guided bitmask
//! runs after the penalties here, before the bias and the penalties on the
//! host: the order does not matter, as a masked logit is -inf under every add
//! and penalty.

use cudarc::driver::CudaSlice;

use super::{sys, to_i32, CudaBackend};
use crate::backend::{RankedToken, SampleBatch, SampleRow, SampledRow};
use crate::error::Result;

impl CudaBackend {
    pub(super) fn sample_batch(
        &self,
        logits: &CudaSlice<f32>,
        batch: &SampleBatch,
    ) -> Result<Vec<SampledRow>> {
        batch.check(logits.len())?;
        if batch.rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<&SampleRow> = batch.rows.iter().collect();
        self.sample_on_device(logits, &rows, batch.vocab)
    }

    /// `[rows, vocab]`: each row's logits row, copied.
    fn gather(
        &self,
        logits: &CudaSlice<f32>,
        rows: &[&SampleRow],
        vocab: usize,
    ) -> Result<CudaSlice<f32>> {
        let idx: Vec<i32> = rows
            .iter()
            .map(|r| to_i32("logits row", r.logits_row))
            .collect::<Result<_>>()?;
        let idx = self.dev.upload(&idx)?;
        let mut work = self.dev.alloc_uninit::<f32>(rows.len() * vocab)?;
        // SAFETY: SampleBatch::check put every row inside the logits; work holds rows x vocab.
        self.launched("gather_rows", unsafe {
            sys::ek_gather_rows(
                self.pm(&mut work),
                self.p(logits),
                sys::EK_DTYPE_F32 as i32,
                self.p(&idx).cast(),
                rows.len() as i64,
                vocab as i64,
                self.stream(),
            )
        })?;
        Ok(work)
    }

    fn sample_on_device(
        &self,
        logits: &CudaSlice<f32>,
        rows: &[&SampleRow],
        vocab: usize,
    ) -> Result<Vec<SampledRow>> {
        let mut work = self.gather(logits, rows, vocab)?;
        self.sparse_edits(&mut work, rows, vocab)?;
        self.penalties(&mut work, rows, vocab)?;
        self.bitmask(&mut work, rows, vocab)?;
        self.temperature_and_truncation(&mut work, rows, vocab)?;
        if rows.iter().all(|r| r.draw.is_none() && r.top_logprobs == 0) {
            return self.greedy(&work, rows.len(), vocab);
        }
        let (n, v) = (rows.len() as i64, vocab as i64);
        let mut lp = self.dev.alloc_zeros::<f32>(rows.len() * vocab)?;
        // SAFETY: lp and work both hold rows x vocab f32.
        self.launched("log_softmax", unsafe {
            sys::ek_log_softmax(
                self.pm(&mut lp).cast(),
                self.p(&work).cast(),
                n,
                v,
                self.stream(),
            )
        })?;
        let tokens = self.choose(&lp, rows, vocab)?;
        self.ranked(&lp, rows, vocab, &tokens)
    }

    /// Every row greedy, without top logprobs: the fused kernel's token and
    /// logprob (rank 1: the argmax ranks first), without the log_softmax rows.
    fn greedy(&self, work: &CudaSlice<f32>, rows: usize, vocab: usize) -> Result<Vec<SampledRow>> {
        let (n, v) = (rows as i64, vocab as i64);
        // SAFETY: a pure size computation.
        let bytes = unsafe { sys::ek_greedy_workspace_bytes(n, v) };
        let mut workspace = self.dev.alloc_uninit::<u8>(bytes as usize)?;
        let mut tokens = self.dev.alloc_uninit::<i32>(rows)?;
        let mut logprobs = self.dev.alloc_uninit::<f32>(rows)?;
        // SAFETY: work holds rows x vocab; one token and logprob per row; the
        // workspace has the size asked for (the kernel writes it first).
        self.launched("greedy", unsafe {
            sys::ek_greedy(
                self.pm(&mut tokens).cast(),
                self.pm(&mut logprobs).cast(),
                self.p(work).cast(),
                n,
                v,
                self.pm(&mut workspace),
                self.stream(),
            )
        })?;
        let tokens = self.dev.download(&tokens)?;
        let logprobs = self.dev.download(&logprobs)?;
        Ok(tokens
            .iter()
            .zip(&logprobs)
            .take(rows)
            .map(|(&token, &logprob)| SampledRow {
                chosen: RankedToken {
                    token: token as u32,
                    logprob,
                    rank: 1,
                },
                top: Vec::new(),
            })
            .collect())
    }

    fn penalties(
        &self,
        work: &mut CudaSlice<f32>,
        rows: &[&SampleRow],
        vocab: usize,
    ) -> Result<()> {
        if !rows.iter().any(|r| r.has_penalties()) {
            return Ok(());
        }
        let mut offsets = vec![0i32];
        let (mut ids, mut counts) = (Vec::new(), Vec::new());
        for r in rows {
            for &(id, count) in r.penalty_tokens.iter().filter(|_| r.has_penalties()) {
                ids.push(to_i32("token id", id as usize)?);
                counts.push(to_i32("token count", count as usize)?);
            }
            offsets.push(to_i32("penalty tokens", ids.len())?);
        }
        let per_row = |f: fn(&SampleRow) -> f32| rows.iter().map(|r| f(r)).collect::<Vec<f32>>();
        let rep = self.dev.upload(&per_row(|r| r.repetition_penalty))?;
        let freq = self.dev.upload(&per_row(|r| r.frequency_penalty))?;
        let pres = self.dev.upload(&per_row(|r| r.presence_penalty))?;
        let (offsets, ids, counts) = (
            self.dev.upload(&offsets)?,
            self.dev.upload(&ids)?,
            self.dev.upload(&counts)?,
        );
        // SAFETY: offsets has rows + 1 entries bounding ids/counts; one float per row each.
        self.launched("apply_penalties", unsafe {
            sys::ek_apply_penalties(
                self.pm(work).cast(),
                rows.len() as i64,
                vocab as i64,
                self.p(&offsets).cast(),
                self.p(&ids).cast(),
                self.p(&counts).cast(),
                self.p(&rep).cast(),
                self.p(&freq).cast(),
                self.p(&pres).cast(),
                self.stream(),
            )
        })
    }

    /// Each row's logit bias added, then its masked ids set to -inf.
    fn sparse_edits(
        &self,
        work: &mut CudaSlice<f32>,
        rows: &[&SampleRow],
        vocab: usize,
    ) -> Result<()> {
        let adds = rows.iter().map(|r| r.logit_adds.iter().copied());
        self.sparse(work, rows.len(), vocab, adds, false)?;
        let masks = rows
            .iter()
            .map(|r| r.masked_ids.iter().map(|&id| (id, f32::NEG_INFINITY)));
        self.sparse(work, rows.len(), vocab, masks, true)
    }

    /// Row `i`'s `(token, value)` pairs written (`set`) or added into `work`.
    fn sparse<R: Iterator<Item = (u32, f32)>>(
        &self,
        work: &mut CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        per_row: impl Iterator<Item = R>,
        set: bool,
    ) -> Result<()> {
        let (mut row_ids, mut token_ids, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (r, entries) in per_row.enumerate() {
            for (id, value) in entries {
                row_ids.push(to_i32("row", r)?);
                // Ids past int32 are past any vocabulary: skipped as the host skips them.
                token_ids.push(i32::try_from(id).unwrap_or(-1));
                values.push(value);
            }
        }
        if values.is_empty() {
            return Ok(());
        }
        let (rd, td, vd) = (
            self.dev.upload(&row_ids)?,
            self.dev.upload(&token_ids)?,
            self.dev.upload(&values)?,
        );
        // SAFETY: work holds rows x vocab f32; the three arrays hold n entries each.
        self.launched("apply_sparse_logits", unsafe {
            sys::ek_apply_sparse_logits(
                self.pm(work).cast(),
                rows as i64,
                vocab as i64,
                self.p(&rd).cast(),
                self.p(&td).cast(),
                self.p(&vd).cast(),
                values.len() as i64,
                i32::from(set),
                self.stream(),
            )
        })
    }

    fn bitmask(&self, work: &mut CudaSlice<f32>, rows: &[&SampleRow], vocab: usize) -> Result<()> {
        if rows.iter().all(|r| r.bitmask.is_none()) {
            return Ok(());
        }
        let words = vocab.div_ceil(32);
        let mut mask = Vec::with_capacity(rows.len() * words);
        for r in rows {
            match &r.bitmask {
                // Tokens past a mask's end are disallowed, as on the host.
                Some(m) => mask.extend((0..words).map(|w| m.get(w).copied().unwrap_or(0))),
                None => mask.extend(std::iter::repeat_n(u32::MAX, words)),
            }
        }
        let mask = self.dev.upload(&mask)?;
        // SAFETY: mask holds rows x words u32.
        self.launched("apply_token_bitmask", unsafe {
            sys::ek_apply_token_bitmask(
                self.pm(work).cast(),
                rows.len() as i64,
                vocab as i64,
                self.p(&mask).cast(),
                words as i64,
                self.stream(),
            )
        })
    }
}

impl CudaBackend {
    fn temperature_and_truncation(
        &self,
        work: &mut CudaSlice<f32>,
        rows: &[&SampleRow],
        vocab: usize,
    ) -> Result<()> {
        let (n, v) = (rows.len() as i64, vocab as i64);
        if rows.iter().any(|r| r.temperature != 1.0) {
            let t: Vec<f32> = rows.iter().map(|r| r.temperature).collect();
            let t = self.dev.upload(&t)?;
            // SAFETY: one temperature per row.
            self.launched("apply_temperature", unsafe {
                sys::ek_apply_temperature(
                    self.pm(work).cast(),
                    n,
                    v,
                    self.p(&t).cast(),
                    self.stream(),
                )
            })?;
        }
        if !rows
            .iter()
            .any(|r| r.top_k > 0 || r.top_p < 1.0 || r.min_p > 0.0)
        {
            return Ok(());
        }
        let top_k: Vec<i32> = rows
            .iter()
            .map(|r| i32::try_from(r.top_k).unwrap_or(0))
            .collect();
        let top_p: Vec<f64> = rows.iter().map(|r| r.top_p).collect();
        let min_p: Vec<f64> = rows.iter().map(|r| r.min_p).collect();
        let (k, p, m) = (
            self.dev.upload(&top_k)?,
            self.dev.upload(&top_p)?,
            self.dev.upload(&min_p)?,
        );
        // SAFETY: one value per row in each array.
        self.launched("apply_top_k_top_p_min_p", unsafe {
            sys::ek_apply_top_k_top_p_min_p(
                self.pm(work).cast(),
                n,
                v,
                self.p(&k).cast(),
                self.p(&p).cast(),
                self.p(&m).cast(),
                self.stream(),
            )
        })
    }

    /// Each row's token: the argmax of greedy rows, a Philox draw otherwise.
    fn choose(&self, lp: &CudaSlice<f32>, rows: &[&SampleRow], vocab: usize) -> Result<Vec<i32>> {
        let (n, v) = (rows.len() as i64, vocab as i64);
        let mut greedy = self.dev.alloc_zeros::<i32>(rows.len())?;
        // SAFETY: greedy holds one id per row of lp.
        self.launched("argmax", unsafe {
            sys::ek_argmax(
                self.pm(&mut greedy).cast(),
                self.p(lp).cast(),
                n,
                v,
                self.stream(),
            )
        })?;
        let mut tokens = self.dev.download(&greedy)?;
        tokens.truncate(rows.len());
        if rows.iter().any(|r| r.draw.is_some()) {
            let at = |f: fn((u64, u64, u64)) -> u64| -> Vec<u64> {
                rows.iter().map(|r| r.draw.map_or(0, f)).collect()
            };
            let seeds = self.dev.upload(&at(|d| d.0))?;
            let streams = self.dev.upload(&at(|d| d.1))?;
            let counters = self.dev.upload(&at(|d| d.2))?;
            let mut drawn = self.dev.alloc_zeros::<i32>(rows.len())?;
            // SAFETY: one seed, stream and counter per row; drawn holds one id per row.
            self.launched("sample", unsafe {
                sys::ek_sample(
                    self.pm(&mut drawn).cast(),
                    self.p(lp).cast(),
                    n,
                    v,
                    self.p(&seeds).cast(),
                    self.p(&streams).cast(),
                    self.p(&counters).cast(),
                    self.stream(),
                )
            })?;
            let drawn = self.dev.download(&drawn)?;
            for ((t, d), r) in tokens.iter_mut().zip(drawn).zip(rows) {
                if r.draw.is_some() {
                    *t = d;
                }
            }
        }
        Ok(tokens)
    }

    /// The chosen tokens' logprobs and ranks, and each row's top-N.
    fn ranked(
        &self,
        lp: &CudaSlice<f32>,
        rows: &[&SampleRow],
        vocab: usize,
        tokens: &[i32],
    ) -> Result<Vec<SampledRow>> {
        let (n, v) = (rows.len() as i64, vocab as i64);
        let chosen = self.dev.upload(tokens)?;
        let mut values = self.dev.alloc_zeros::<f32>(rows.len())?;
        let mut ranks = self.dev.alloc_zeros::<i32>(rows.len())?;
        // SAFETY: one token, value and rank per row of lp.
        self.launched("token_rank", unsafe {
            sys::ek_token_rank(
                self.pm(&mut values).cast(),
                self.pm(&mut ranks).cast(),
                self.p(lp).cast(),
                self.p(&chosen).cast(),
                n,
                v,
                self.stream(),
            )
        })?;
        let top_n = rows
            .iter()
            .map(|r| r.top_logprobs)
            .max()
            .unwrap_or(0)
            .min(vocab);
        let (top_ids, top_values) = self.top(lp, rows.len(), vocab, top_n)?;
        let (values, ranks) = (self.dev.download(&values)?, self.dev.download(&ranks)?);
        Ok(rows
            .iter()
            .enumerate()
            .map(|(i, r)| SampledRow {
                chosen: RankedToken {
                    token: tokens[i] as u32,
                    logprob: values[i],
                    rank: ranks[i].max(1) as usize,
                },
                top: (0..r.top_logprobs.min(top_n))
                    .map(|j| RankedToken {
                        token: top_ids[i * top_n + j] as u32,
                        logprob: top_values[i * top_n + j],
                        rank: j + 1,
                    })
                    .collect(),
            })
            .collect())
    }

    /// The `top_n` most likely of each row: ids and logprobs, `[rows, top_n]`.
    fn top(
        &self,
        lp: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        top_n: usize,
    ) -> Result<(Vec<i32>, Vec<f32>)> {
        if top_n == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut ids = self.dev.alloc_zeros::<i32>(rows * top_n)?;
        let mut values = self.dev.alloc_zeros::<f32>(rows * top_n)?;
        // SAFETY: ids and values hold rows x top_n; top_n <= vocab.
        self.launched("top_logprobs", unsafe {
            sys::ek_top_logprobs(
                self.pm(&mut ids).cast(),
                self.pm(&mut values).cast(),
                self.p(lp).cast(),
                rows as i64,
                vocab as i64,
                to_i32("top logprobs", top_n)?,
                self.stream(),
            )
        })?;
        Ok((self.dev.download(&ids)?, self.dev.download(&values)?))
    }
}
