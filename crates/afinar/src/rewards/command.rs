//! The `command` reward: one run of a user's program per batch, JSON lines in, numbers out.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Completion, RewardError};

/// How much of stderr an error shows.
const STDERR_TAIL_CHARS: usize = 2000;

/// The last `STDERR_TAIL_CHARS` characters of `bytes`, as text.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let n = text.chars().count();
    if n <= STDERR_TAIL_CHARS {
        return text.into_owned();
    }
    let skip = n - STDERR_TAIL_CHARS;
    format!("…{}", text.chars().skip(skip).collect::<String>())
}

/// Runs `argv` once for the whole batch; see the module documentation of
/// [`crate::rewards`] for the protocol and the errors.
pub(super) fn run(
    name: &str,
    argv: &[String],
    timeout: Duration,
    cwd: Option<&Path>,
    batch: &[Completion<'_>],
) -> Result<Vec<f64>, RewardError> {
    let shown = argv.join(" ");
    let fail = |message: String, stderr: &[u8]| RewardError::Command {
        reward: name.to_string(),
        command: shown.clone(),
        message,
        stderr: tail(stderr),
    };
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut input = String::new();
    for (i, c) in batch.iter().enumerate() {
        let line = json!({
            "prompt": c.prompt_text,
            "rendered_prompt": c.prompt,
            "completion": c.completion,
            "row": c.fields,
            "row_index": c.row,
            "index": i,
        });
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let (program, args) = argv.split_first().expect("a command reward has a program");
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|e| {
        let where_ = cwd.map(|d| format!(" in {}", d.display())).unwrap_or_default();
        fail(format!("cannot start the program{where_}: {e}"), b"")
    })?;

    // stdin, stdout and stderr each on a thread, so that a program that writes before it has
    // read everything cannot deadlock against us.
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        // A program that exits without reading its input closes the pipe: not our error (its
        // exit status or output says what went wrong).
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let reader = |mut pipe: Box<dyn Read + Send>, buf: Arc<Mutex<Vec<u8>>>| {
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.lock().expect("reader lock").extend_from_slice(&chunk[..n]),
                }
            }
        })
    };
    let out_t = reader(Box::new(child.stdout.take().expect("piped")), Arc::clone(&out));
    let err_t = reader(Box::new(child.stderr.take().expect("piped")), Arc::clone(&err));

    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader threads are left to finish on their own: a grandchild may still
                // hold the pipes open.
                std::thread::sleep(Duration::from_millis(50));
                let stderr = err.lock().expect("stderr lock").clone();
                return Err(fail(
                    format!(
                        "did not finish within timeout_s = {} s for a batch of {} completions, and was \
                         killed; raise timeout_s or make it faster",
                        timeout.as_secs_f64(),
                        batch.len()
                    ),
                    &stderr,
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(fail(format!("cannot wait for the program: {e}"), b"")),
        }
    };
    let _ = writer.join();
    let _ = out_t.join();
    let _ = err_t.join();
    let stdout = std::mem::take(&mut *out.lock().expect("stdout lock"));
    let stderr = std::mem::take(&mut *err.lock().expect("stderr lock"));
    if !status.success() {
        let how = match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "was killed by a signal".to_string(),
        };
        return Err(fail(format!("{how}; expected status 0 and one score per completion"), &stderr));
    }
    let text = String::from_utf8_lossy(&stdout);
    let mut lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    if lines.len() != batch.len() {
        return Err(fail(
            format!(
                "wrote {} line{} on stdout for {} completions; expected exactly one number per line, \
                 one line per completion, in input order",
                lines.len(),
                if lines.len() == 1 { "" } else { "s" },
                batch.len()
            ),
            &stderr,
        ));
    }
    lines
        .iter()
        .zip(batch)
        .enumerate()
        .map(|(i, (line, c))| {
            let v = line.trim().parse::<f64>().ok();
            match v {
                Some(v) if v.is_finite() => Ok(v),
                _ => Err(fail(
                    format!(
                        "stdout line {} (completion {i}, dataset row {}): expected a finite number, got {:?}",
                        i + 1,
                        c.row,
                        line
                    ),
                    &stderr,
                )),
            }
        })
        .collect()
}
