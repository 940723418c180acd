//! The model's own thread: admits requests from a queue, keeps up to `max_active` sequences in
//! flight, each with its own KV cache and sampler, and advances them by interleaved decode steps
//! (one token of each sequence in turn), sending text back as it is produced.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use afinar::blocks::KvCache;
use afinar::engine::Backend;
use afinar::generate::{Sampler, SamplingParams};
use afinar::models::{Llama, Logits, LoraAdapter};
use afinar::tokenizer::{DecodeStream, Tokenizer};
use tokio::sync::mpsc::UnboundedSender;

/// Why an answer ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// The token limit or the end of the context.
    Length,
}

impl Finish {
    /// `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the model thread sends back for one request.
#[derive(Debug)]
pub enum Event {
    /// More answer text.
    Text(String),
    /// The end, with the token counts.
    Done {
        /// Why it ended.
        finish: Finish,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (stop token excluded).
        completion_tokens: usize,
    },
    /// The model failed on this request.
    Failed(String),
}

/// Counts a request from admission until the model thread drops it.
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes a place among `limit`, or `None` when all are taken.
    pub fn try_take(count: &Arc<AtomicUsize>, limit: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request for the model thread.
pub struct Job {
    /// Index of the adapter, `None` for the base model.
    pub adapter: Option<usize>,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// New tokens at most (the prompt plus these fit the context).
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Where the events go.
    pub tx: UnboundedSender<Event>,
    /// Its place in the admission count.
    pub slot: Slot,
}

struct Seq<'t, B: Backend> {
    job: Job,
    cache: KvCache<B>,
    sampler: Sampler,
    logits: Vec<f32>,
    stream: DecodeStream<'t>,
    /// Decoded text not yet sent: it may be the start of a stop string.
    held: String,
    generated: usize,
}

/// Splits `held` at the first stop string (returns the text before it) or keeps back the longest
/// tail that could begin one; returns `(text to send, stopped)`.
pub fn cut_stop(held: &mut String, stops: &[String]) -> (String, bool) {
    let first = stops.iter().filter_map(|s| held.find(s.as_str())).min();
    if let Some(at) = first {
        let out = held[..at].to_string();
        held.clear();
        return (out, true);
    }
    let mut keep = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if held.ends_with(&s[..i]) {
                keep = keep.max(i);
            }
        }
    }
    let cut = held.len() - keep;
    let out = held[..cut].to_string();
    held.drain(..cut);
    (out, false)
}

/// The model thread's loop; returns when every sender of `rx` is gone and no work is left.
pub fn run<B: Backend>(
    be: &B,
    model: &mut Llama<B>,
    tok: &Tokenizer,
    adapters: &mut [LoraAdapter<B>],
    rx: mpsc::Receiver<Job>,
    max_active: usize,
) {
    let stop_ids = tok.stop_ids();
    let mut queue: VecDeque<Job> = VecDeque::new();
    let mut active: Vec<Seq<'_, B>> = Vec::new();
    let mut applied: Option<usize> = None;
    let mut open = true;
    while open || !queue.is_empty() || !active.is_empty() {
        // Take new requests: wait when idle, otherwise only what is there.
        if active.is_empty() && queue.is_empty() {
            match rx.recv() {
                Ok(job) => queue.push_back(job),
                Err(_) => open = false,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(job) => queue.push_back(job),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        queue.retain(|j| !j.tx.is_closed());
        // Admit: prefill each new sequence.
        while active.len() < max_active {
            let Some(job) = queue.pop_front() else { break };
            select(model, adapters, &mut applied, job.adapter);
            match prefill(be, model, &job) {
                Ok((cache, logits)) => active.push(Seq {
                    sampler: Sampler::new(job.sampling),
                    job,
                    cache,
                    logits,
                    stream: tok.decode_stream(true),
                    held: String::new(),
                    generated: 0,
                }),
                Err(e) => {
                    let _ = job.tx.send(Event::Failed(e));
                }
            }
        }
        // One decode step of each active sequence.
        let mut i = 0;
        while i < active.len() {
            select(model, adapters, &mut applied, active[i].job.adapter);
            match step(be, model, &stop_ids, &mut active[i]) {
                Ok(false) => i += 1,
                Ok(true) => {
                    active.swap_remove(i);
                }
                Err(e) => {
                    let seq = active.swap_remove(i);
                    let _ = seq.job.tx.send(Event::Failed(e));
                }
            }
        }
    }
    select(model, adapters, &mut applied, None);
}

/// Makes `want` the adapter applied to the model.
fn select<B: Backend>(
    model: &mut Llama<B>,
    adapters: &mut [LoraAdapter<B>],
    applied: &mut Option<usize>,
    want: Option<usize>,
) {
    if *applied == want {
        return;
    }
    if let Some(a) = applied.take() {
        model.swap_adapter(&mut adapters[a]);
    }
    if let Some(w) = want {
        model.swap_adapter(&mut adapters[w]);
    }
    *applied = want;
}

/// A KV cache for `job` holding its prompt, and the logits of the prompt's last position.
fn prefill<B: Backend>(be: &B, model: &Llama<B>, job: &Job) -> Result<(KvCache<B>, Vec<f32>), String> {
    let capacity = job.prompt.len() + job.max_tokens;
    let mut cache = model.new_cache(be, 1, capacity).map_err(|e| format!("allocating the KV cache: {e}"))?;
    let logits = model
        .forward(be, &job.prompt, 1, job.prompt.len(), Some(&mut cache), Logits::Last)
        .map_err(|e| format!("prompt: {e}"))?;
    Ok((cache, logits))
}

/// Samples the next token of `seq`, sends what text is final, and runs the forward pass for the
/// following one. `Ok(true)` when the sequence is finished (or its client gone).
fn step<B: Backend>(
    be: &B,
    model: &Llama<B>,
    stop_ids: &[u32],
    seq: &mut Seq<'_, B>,
) -> Result<bool, String> {
    if seq.job.tx.is_closed() {
        return Ok(true);
    }
    let next = seq.sampler.sample(&seq.logits);
    // (why it ends, whether a stop string ended it)
    let finish = if stop_ids.contains(&next) {
        Some((Finish::Stop, false))
    } else {
        seq.generated += 1;
        if let Some(piece) = seq.stream.step(next).map_err(|e| e.to_string())? {
            seq.held.push_str(&piece);
        }
        let (text, stopped) = cut_stop(&mut seq.held, &seq.job.stop);
        if !text.is_empty() {
            let _ = seq.job.tx.send(Event::Text(text));
        }
        if stopped {
            Some((Finish::Stop, true))
        } else if seq.generated >= seq.job.max_tokens || seq.cache.len >= seq.cache.capacity {
            Some((Finish::Length, false))
        } else {
            None
        }
    };
    if let Some((finish, by_string)) = finish {
        if !by_string {
            // What was held back for a stop string that never came, and any cut character.
            let mut rest = std::mem::take(&mut seq.held);
            if let Some(tail) = seq.stream.flush() {
                rest.push_str(&tail);
            }
            let (text, _) = cut_stop(&mut rest, &seq.job.stop);
            let text = text + &rest;
            if !text.is_empty() {
                let _ = seq.job.tx.send(Event::Text(text));
            }
        }
        let _ = seq.job.tx.send(Event::Done {
            finish,
            prompt_tokens: seq.job.prompt.len(),
            completion_tokens: seq.generated,
        });
        return Ok(true);
    }
    seq.logits =
        model.forward(be, &[next], 1, 1, Some(&mut seq.cache), Logits::Last).map_err(|e| e.to_string())?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::cut_stop;

    #[test]
    fn stop_strings_are_cut_and_their_starts_held_back() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        let mut held = "hello E".to_string();
        assert_eq!(cut_stop(&mut held, &stops), ("hello ".to_string(), false));
        assert_eq!(held, "E");
        held.push('N');
        assert_eq!(cut_stop(&mut held, &stops), (String::new(), false));
        held.push_str("D and more");
        assert_eq!(cut_stop(&mut held, &stops), (String::new(), true));
        let mut held = "a\n".to_string();
        assert_eq!(cut_stop(&mut held, &stops), ("a".to_string(), false));
        held.push('b');
        assert_eq!(cut_stop(&mut held, &stops), ("\nb".to_string(), false));
        let mut held = "x ENDy \n\n".to_string();
        assert_eq!(cut_stop(&mut held, &stops), ("x ".to_string(), true));
        let mut held = "no stops".to_string();
        assert_eq!(cut_stop(&mut held, &[]), ("no stops".to_string(), false));
    }
}
