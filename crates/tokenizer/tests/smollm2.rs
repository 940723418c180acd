//! SmolLM2 tokenizer built from GGUF metadata (dumped to smollm2_spec.json) against the reference.

mod common;

use std::sync::OnceLock;

use afinar_tokenizer::{render_chat, token_stats, PreTokenizer, Tokenizer};
use common::{fixture, ids, messages, smollm2_spec, text};

fn smollm2() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_gguf(smollm2_spec()).expect("build from GGUF spec"))
}

#[test]
fn gguf_tokenizer_matches_original_smollm2_ids() {
    let tok = smollm2();
    let fx = fixture("smollm2.json");
    assert_eq!(tok.vocab_size() as u64, fx["vocab_size"].as_u64().unwrap());
    assert_eq!(tok.pre_tokenizer(), PreTokenizer::Gpt2 { individual_digits: true });
    let mut failures = Vec::new();
    let mut transformers_differs = 0;
    for case in fx["cases"].as_array().unwrap() {
        let t = text(&case["text"]);
        let want = ids(&case["ids"]);
        let got = tok.encode(t, false).unwrap();
        if got != want {
            failures.push(format!("{t:?}\n  want {want:?}\n  got  {got:?}"));
        }
        assert_eq!(tok.decode(&got, false).unwrap(), t);
        if ids(&case["transformers_gguf_ids"]) != want {
            transformers_differs += 1;
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    // transformers' GGUF loader drops SmolLM2's digit isolation; the corpus shows it (whitespace
    // before digits), so the fixture really tells the two pre-tokenizers apart.
    assert!(transformers_differs > 0);
}

#[test]
fn gguf_tokenizer_with_plain_gpt2_split_matches_transformers() {
    let mut spec = smollm2_spec();
    spec.pre = Some("gpt2".into());
    let tok = Tokenizer::from_gguf(spec).unwrap();
    let fx = fixture("smollm2.json");
    for case in fx["cases"].as_array().unwrap() {
        let t = text(&case["text"]);
        assert_eq!(tok.encode(t, false).unwrap(), ids(&case["transformers_gguf_ids"]), "{t:?}");
    }
}

#[test]
fn gguf_special_tokens_and_ids() {
    let tok = smollm2();
    let fx = fixture("smollm2.json");
    assert_eq!(tok.bos_id().map(u64::from), fx["bos_id"].as_u64());
    assert_eq!(tok.eos_id().map(u64::from), fx["eos_id"].as_u64());
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let endoftext = tok.token_to_id("<|endoftext|>").unwrap();
    assert!(tok.stop_ids().contains(&im_end) && tok.stop_ids().contains(&endoftext));
    assert!(tok.is_special(im_end));
    assert!(!tok.add_bos_default());
    assert_eq!(tok.bos_token(), Some("<|im_start|>"));
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap();
    assert_eq!(ids[0], tok.bos_id().unwrap());
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhi");
}

#[test]
fn gguf_chat_template_matches_transformers() {
    let tok = smollm2();
    let fx = fixture("chat.json");
    for case in fx["smollm2_template"].as_array().unwrap() {
        let msgs = messages(&case["messages"]);
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let out = render_chat(tok, &msgs, agp).unwrap();
        assert_eq!(out, text(&case["text"]), "add_generation_prompt={agp}");
        assert_eq!(tok.encode(&out, false).unwrap(), ids(&case["ids"]));
    }
}

#[test]
fn stats_for_english_and_spanish() {
    let tok = smollm2();
    let en = token_stats(tok, common::EN).unwrap();
    let es = token_stats(tok, common::ES).unwrap();
    println!("smollm2 EN {en:?}\nsmollm2 ES {es:?}");
    assert_eq!(en.words, 54);
    assert_eq!(en.tokens, tok.encode(common::EN, false).unwrap().len());
    // SmolLM2's vocabulary is English-centred: Spanish words cost more tokens.
    assert!(es.tokens_per_word > en.tokens_per_word, "{en:?} {es:?}");
}
