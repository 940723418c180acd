//! Loss masks for every dataset kind × `TrainOn`, checked against layouts derived here from the
//! tokenizer alone: the trained tokens must decode to the responses (plus end-of-turn/EOS), and
//! the whole sample must be the tokenization of the rendered prompt.

mod common;

use afinar_data::{
    alpaca_prompt, DataError, Dataset, DatasetKind, InstructTemplate, LongRows, PromptFormat, Sample,
    TrainOn, IGNORE_INDEX,
};
use afinar_tokenizer::{render_chat, render_llama3, Message, Tokenizer};
use common::*;
use serde_json::json;

const INSTRUCTION: &str = "Name a fruit.";
const OUTPUT: &str = "🦙 Sure! A pear.\n— afinar";

fn tokenizers() -> [(&'static str, &'static Tokenizer); 2] {
    [("llama3", llama3()), ("smollm2", smollm2())]
}

/// The text of a special id (`<|eot_id|>`, `<|im_end|>`, ...).
fn text_of(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap()
}

fn all_trained(s: &Sample) -> bool {
    (0..s.len() - 1).all(|t| s.labels[t] == s.ids[t + 1] as i32)
}

fn instruct_file(name: &str, input: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    write_jsonl(
        &dir,
        "instruct.jsonl",
        &[json!({"instruction": INSTRUCTION, "input": input, "output": OUTPUT})],
    )
}

#[test]
fn instruct_alpaca_trains_on_the_output_and_eos() {
    for (name, tok) in tokenizers() {
        for input in ["", "Something yellow."] {
            let path = instruct_file(&format!("alpaca-{name}-{}", input.len()), input);
            let mut sp = spec(DatasetKind::Instruct, &path);
            sp.template = InstructTemplate::Alpaca;
            // The layout, built independently: [BOS] prompt output EOS.
            let mut want: Vec<u32> = Vec::new();
            if tok.add_bos_default() {
                want.extend(tok.bos_id());
            }
            want.extend(tok.encode(&alpaca_prompt(INSTRUCTION, input), false).unwrap());
            let prompt_len = want.len();
            want.extend(tok.encode(OUTPUT, false).unwrap());
            want.push(tok.eos_id().unwrap());
            assert!(alpaca_prompt(INSTRUCTION, input).ends_with("### Response:\n"));
            assert!(!alpaca_prompt(INSTRUCTION, "").contains("### Input:"));

            for train_on in [TrainOn::Assistant, TrainOn::Last, TrainOn::All] {
                sp.train_on = train_on;
                let ds = load(&sp, tok);
                assert_eq!(ds.stats().prompt_format, Some(PromptFormat::Alpaca));
                let s = ds.sample(0);
                check_shift(s);
                assert_eq!(s.ids, want, "{name}");
                if train_on == TrainOn::All {
                    assert!(all_trained(s), "{name}: every token is a target");
                } else {
                    let eos = text_of(tok, tok.eos_id().unwrap());
                    assert_eq!(tok.decode(&target_ids(s), false).unwrap(), format!("{OUTPUT}{eos}"));
                    // The first target is the first output token, predicted from the prompt's end.
                    assert_eq!(s.labels[prompt_len - 1], want[prompt_len] as i32);
                    assert!(s.labels[..prompt_len - 1].iter().all(|&l| l == IGNORE_INDEX));
                }
            }
        }
    }
}

#[test]
fn instruct_chat_template_trains_on_the_reply_and_end_of_turn() {
    for (name, tok) in tokenizers() {
        let path = instruct_file(&format!("instruct-chat-{name}"), "Something yellow.");
        let mut sp = spec(DatasetKind::Instruct, &path);
        // Auto picks the chat template when the tokenizer has one (both do).
        let msgs = [
            Message::new("user", format!("{INSTRUCTION}\n\nSomething yellow.")),
            Message::new("assistant", OUTPUT),
        ];
        let want = tok.encode(&render_chat(tok, &msgs, false).unwrap(), false).unwrap();
        let end_of_turn = if name == "llama3" { "<|eot_id|>" } else { "<|im_end|>" };
        for train_on in [TrainOn::Assistant, TrainOn::Last, TrainOn::All] {
            sp.train_on = train_on;
            let ds = load(&sp, tok);
            assert_eq!(ds.stats().prompt_format, Some(PromptFormat::ChatTemplate));
            let s = ds.sample(0);
            check_shift(s);
            assert_eq!(s.ids, want, "{name}: sample = tokenized rendering");
            if train_on == TrainOn::All {
                assert!(all_trained(s));
            } else {
                let runs = target_runs(s);
                assert_eq!(runs.len(), 1);
                assert_eq!(tok.decode(&runs[0], false).unwrap(), format!("{OUTPUT}{end_of_turn}"));
            }
        }
    }
}

#[test]
fn text_trains_on_everything() {
    let dir = scratch("text");
    let text = "Plain text: la llama come hierba.";
    let path = write_jsonl(&dir, "t.jsonl", &[json!({"body": text})]);
    for (name, tok) in tokenizers() {
        let mut sp = spec(DatasetKind::Text, &path);
        sp.column_map.insert("text".into(), "body".into());
        sp.train_on = TrainOn::Last; // ignored for text
        let ds = load(&sp, tok);
        assert_eq!(ds.stats().prompt_format, Some(PromptFormat::Text));
        let s = ds.sample(0);
        let mut want: Vec<u32> = Vec::new();
        if tok.add_bos_default() {
            want.extend(tok.bos_id());
        }
        want.extend(tok.encode(text, false).unwrap());
        want.push(tok.eos_id().unwrap());
        assert_eq!(s.ids, want, "{name}");
        assert!(all_trained(s));
        assert_eq!(ds.num_label_tokens(), want.len() - 1);
    }
}

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You answer briefly."),
        Message::new("user", "What is the capital of Spain?"),
        Message::new("assistant", "🦙 Sure! Madrid."),
        Message::new("user", "¿Y la de Portugal?"),
        Message::new("assistant", "🦙 ¡Claro! Lisboa."),
    ]
}

fn chat_files(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch(name);
    let msgs = conversation();
    let openai: Vec<_> = msgs.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
    let share: Vec<_> = msgs
        .iter()
        .map(|m| {
            let from = match m.role.as_str() {
                "user" => "human",
                "assistant" => "gpt",
                r => r,
            };
            json!({"from": from, "value": m.content})
        })
        .collect();
    (
        write_jsonl(&dir, "openai.jsonl", &[json!({ "messages": openai })]),
        write_jsonl(&dir, "sharegpt.jsonl", &[json!({ "conversations": share })]),
    )
}

#[test]
fn chat_masks_per_train_on_for_sharegpt_and_openai() {
    for (name, tok) in tokenizers() {
        let (openai, share) = chat_files(&format!("chat-{name}"));
        let msgs = conversation();
        let end_of_turn = if name == "llama3" { "<|eot_id|>" } else { "<|im_end|>" };
        for train_on in [TrainOn::Assistant, TrainOn::Last, TrainOn::All] {
            let mut sp = spec(DatasetKind::Chat, &openai);
            sp.train_on = train_on;
            let a = load(&sp, tok);
            sp.source = share.clone();
            let b = load(&sp, tok);
            assert_eq!(a.samples(), b.samples(), "{name}: sharegpt == openai");
            let s = a.sample(0);
            check_shift(s);
            // Llama-3's template here always appends a generation prompt, so a system message
            // breaks prefix rendering and the native Llama-3 format is used; SmolLM2's ChatML
            // template splits cleanly.
            let rendered = match a.stats().prompt_format {
                Some(PromptFormat::NativeLlama3) => {
                    assert_eq!(name, "llama3");
                    assert!(a.stats().template_fallback.as_deref().unwrap().contains("message"));
                    render_llama3(&msgs, false)
                }
                Some(PromptFormat::ChatTemplate) => {
                    assert_eq!(name, "smollm2");
                    render_chat(tok, &msgs, false).unwrap()
                }
                other => panic!("{name}: unexpected format {other:?}"),
            };
            assert_eq!(s.ids, tok.encode(&rendered, false).unwrap(), "{name}");
            let runs: Vec<String> = target_runs(s).iter().map(|r| tok.decode(r, false).unwrap()).collect();
            match train_on {
                TrainOn::All => assert!(all_trained(s)),
                TrainOn::Assistant => assert_eq!(
                    runs,
                    [format!("🦙 Sure! Madrid.{end_of_turn}"), format!("🦙 ¡Claro! Lisboa.{end_of_turn}")]
                ),
                TrainOn::Last => assert_eq!(runs, [format!("🦙 ¡Claro! Lisboa.{end_of_turn}")]),
            }
        }
    }
}

#[test]
fn chat_without_assistant_reply_is_dropped_and_all_dropped_is_an_error() {
    let dir = scratch("chat-no-assistant");
    let path = write_jsonl(
        &dir,
        "c.jsonl",
        &[
            json!({"messages": [{"role": "user", "content": "Hello?"}]}),
            json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "🦙 Sure! Hi."}]}),
        ],
    );
    let tok = smollm2();
    let ds = load(&spec(DatasetKind::Chat, &path), tok);
    assert_eq!((ds.len(), ds.stats().rows, ds.stats().dropped_no_labels), (1, 2, 1));
    let only_user =
        write_jsonl(&dir, "u.jsonl", &[json!({"messages": [{"role": "user", "content": "Hello?"}]})]);
    let err = Dataset::load(&spec(DatasetKind::Chat, &only_user), tok).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }), "{err}");
    assert!(err.to_string().contains("u.jsonl"), "{err}");
}

#[test]
fn truncation_keeps_the_start_and_is_counted() {
    let dir = scratch("truncate");
    let long = "word ".repeat(200);
    let path = write_jsonl(&dir, "t.jsonl", &[json!({"text": long}), json!({"text": "short"})]);
    let tok = llama3();
    let mut sp = spec(DatasetKind::Text, &path);
    sp.max_seq_len = 32;
    let ds = load(&sp, tok);
    assert_eq!(ds.stats().truncated, 1);
    assert!(ds.sample(0).truncated && !ds.sample(1).truncated);
    assert_eq!(ds.sample(0).len(), 32);
    let full = tok.encode(&long, false).unwrap();
    let offset = usize::from(tok.add_bos_default());
    assert_eq!(&ds.sample(0).ids[offset..], &full[..32 - offset]);
    check_shift(ds.sample(0));

    // A prompt that fills max_seq_len leaves nothing to train on: the row is dropped.
    let ipath = write_jsonl(
        &dir,
        "i.jsonl",
        &[
            json!({"instruction": "word ".repeat(100), "output": "yes"}),
            json!({"instruction": "Hi", "output": "yes"}),
        ],
    );
    let mut sp = spec(DatasetKind::Instruct, &ipath);
    sp.max_seq_len = 40;
    let ds = load(&sp, tok);
    assert_eq!((ds.len(), ds.stats().dropped_no_labels), (1, 1));
}

/// Rows longer than `max_seq_len`: truncated (the default), dropped or refused, each counted and
/// located in the statistics a run prints.
#[test]
fn long_rows_are_truncated_dropped_or_refused_and_reported() {
    let dir = scratch("long-rows");
    let path = write_jsonl(
        &dir,
        "l.jsonl",
        &[
            json!({"instruction": "Hi", "output": "yes"}),
            json!({"instruction": "Hi", "output": "word ".repeat(100)}),
            json!({"instruction": "word ".repeat(100), "output": "yes"}),
            json!({"instruction": "Hello", "output": "no"}),
        ],
    );
    let tok = llama3();
    let mut sp = spec(DatasetKind::Instruct, &path);
    sp.max_seq_len = 40;

    // Truncate: row 2 loses its end, row 3 keeps only its prompt and so is dropped.
    let ds = load(&sp, tok);
    let st = ds.stats();
    assert_eq!((ds.len(), st.kept, st.truncated, st.dropped_no_labels), (3, 3, 1, 1));
    let summary = st.summary(40);
    assert_eq!(
        summary,
        "4 rows read, 3 examples kept; 1 truncated to max_seq_len 40 (line 2); \
         1 dropped: no token to train on (line 3, after truncation)"
    );

    // Drop: both long rows are left out, whatever their labels.
    sp.long_rows = LongRows::Drop;
    let ds = load(&sp, tok);
    assert_eq!((ds.len(), ds.stats().dropped_too_long, ds.stats().truncated), (2, 2, 0));
    assert!(
        ds.stats().summary(40).contains("2 dropped: longer than max_seq_len 40 (line 2, line 3)"),
        "{}",
        ds.stats().summary(40)
    );

    // Error: the first long row is named, with its length.
    sp.long_rows = LongRows::Error;
    let err = Dataset::load(&sp, tok).unwrap_err();
    assert!(matches!(err, DataError::TooLong { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("l.jsonl: line 2: ") && msg.contains("longer than max_seq_len 40"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}
