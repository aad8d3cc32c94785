//! `profiler top`: the hottest functions, live. Every interval the table is drawn again
//! on standard output: a function's own samples (it was the innermost frame) and total
//! samples (it was anywhere on the stack, once per sample however deep the recursion),
//! as shares of the samples of that interval, and the time they stand for since the
//! start. Rows are functions of all threads together, or (with `--by-thread`) of each
//! thread. On a terminal the screen is redrawn in place; otherwise each table is printed
//! after the last one, as plain text.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::{SampleRef, SessionInfo, Sink, SinkReport};
use crate::pipeline::profile::{StackId, Store};
use crate::progress::fit;
use crate::types::Tid;

/// Settings of the live view.
#[derive(Clone, Debug)]
pub struct TopConfig {
    /// Time between two tables.
    pub interval: Duration,
    /// One row per (thread, function) rather than per function.
    pub by_thread: bool,
    /// Most rows per table (default: what fits the terminal, else 20).
    pub rows: Option<usize>,
    /// Redraw the screen in place (standard output is a terminal).
    pub terminal: bool,
}

/// A function's counts.
struct Row {
    label: Arc<str>,
    file: Option<Arc<str>>,
    /// Thread name id, when rows are per thread.
    thread: Option<u32>,
    own: u64,
    total: u64,
    own_now: u64,
    total_now: u64,
}

/// A row's identity: (thread name id or [`ALL`], function, file).
type RowKey = (u32, Arc<str>, Option<Arc<str>>);

/// Marks "not per thread" in cache keys.
const ALL: u32 = u32::MAX;

/// The live table.
pub struct TopSink {
    info: SessionInfo,
    cfg: TopConfig,
    rows: Vec<Row>,
    row_index: HashMap<RowKey, usize>,
    /// Rows of each (stack, thread) seen: the leaf's row first, then every other row on
    /// the stack once.
    stacks: FxHashMap<(StackId, u32), Vec<u32>>,
    counted: u64,
    counted_now: u64,
    threads_now: HashSet<Tid>,
    started: Instant,
    window_start: Instant,
    /// Tables drawn.
    pub drawn: u64,
}

impl TopSink {
    /// A live view of the session described by `info`.
    pub fn new(info: SessionInfo, cfg: TopConfig) -> Self {
        let now = Instant::now();
        TopSink {
            info,
            cfg,
            rows: Vec::new(),
            row_index: HashMap::new(),
            stacks: FxHashMap::default(),
            counted: 0,
            counted_now: 0,
            threads_now: HashSet::new(),
            started: now,
            window_start: now,
            drawn: 0,
        }
    }

    fn rows_of(&mut self, stack: StackId, thread: u32, store: &Store) -> &[u32] {
        let key = (stack, if self.cfg.by_thread { thread } else { ALL });
        if !self.stacks.contains_key(&key) {
            let mut idx = Vec::new();
            store.stack_frames(stack, &mut idx);
            let mut ids: Vec<u32> = Vec::new();
            for &f in &idx {
                for n in store.names(f).iter() {
                    let rk = (key.1, n.label.clone(), n.file.clone());
                    let id = match self.row_index.get(&rk) {
                        Some(&i) => i,
                        None => {
                            self.rows.push(Row {
                                label: n.label.clone(),
                                file: n.file.clone(),
                                thread: (key.1 != ALL).then_some(key.1),
                                own: 0,
                                total: 0,
                                own_now: 0,
                                total_now: 0,
                            });
                            self.row_index.insert(rk, self.rows.len() - 1);
                            self.rows.len() - 1
                        }
                    } as u32;
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            self.stacks.insert(key, ids);
        }
        &self.stacks[&key]
    }

    /// The table as text: the last interval's shares, or (`window` false) the shares of
    /// the whole session.
    pub fn render(&self, store: &Store, window: bool, width: usize, rows: usize) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let period = 1.0 / self.info.frequency;
        let (n, what) = if window {
            (
                self.counted_now,
                format!(
                    "{} {} samples of {} threads in the last {:.1} s",
                    self.counted_now,
                    self.info.mode(),
                    self.threads_now.len(),
                    self.window_start.elapsed().as_secs_f64(),
                ),
            )
        } else {
            (
                self.counted,
                format!("{} {} samples in all", self.counted, self.info.mode()),
            )
        };
        let mut out = String::new();
        out.push_str(&fit(
            &format!(
                "profiler top: {} (pid {}), {secs:.1} s at {} Hz: {what}",
                self.info.program, self.info.pid, self.info.frequency
            ),
            width,
        ));
        out.push('\n');
        out.push_str(if self.info.idle {
            "counting every thread, waiting or not (--idle)\n\n"
        } else {
            "counting threads that ran (on-CPU; --idle adds waiting ones)\n\n"
        });
        let thread_col = if self.cfg.by_thread {
            format!("{:<16} ", "THREAD")
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{:>6} {:>7} {:>8} {:>9}  {thread_col}FUNCTION\n",
            "%OWN", "%TOTAL", "OWN", "TOTAL"
        ));
        let mut order: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| if window { r.total_now > 0 } else { r.total > 0 })
            .collect();
        let key = |r: &Row| {
            if window {
                (r.own_now, r.total_now, r.own)
            } else {
                (r.own, r.total, 0)
            }
        };
        order.sort_by(|a, b| key(b).cmp(&key(a)).then(a.label.cmp(&b.label)));
        let pct = |x: u64| {
            if n == 0 {
                0.0
            } else {
                100.0 * x as f64 / n as f64
            }
        };
        for r in order.into_iter().take(rows) {
            let (own, total) = if window {
                (r.own_now, r.total_now)
            } else {
                (r.own, r.total)
            };
            let thread = match r.thread {
                Some(t) => format!("{:<16} ", fit(store.thread_name(t), 16)),
                None => String::new(),
            };
            let file = r
                .file
                .as_deref()
                .map(|f| format!(" ({})", f.rsplit('/').next().unwrap_or(f)))
                .unwrap_or_default();
            let line = format!(
                "{:>5.1}% {:>6.1}% {:>7.2}s {:>8.2}s  {thread}{}{file}",
                pct(own),
                pct(total),
                r.own as f64 * period,
                r.total as f64 * period,
                r.label
            );
            out.push_str(&fit(&line, width));
            out.push('\n');
        }
        if n == 0 {
            out.push_str(if self.info.idle {
                "  (no samples yet)\n"
            } else {
                "  (no thread ran: every thread waits; --idle shows where)\n"
            });
        }
        out
    }

    fn draw(&mut self, store: &Store, window: bool) {
        let (width, rows) = match (self.cfg.terminal, crate::os::term::stdout_size()) {
            (true, Some((w, h))) => (w as usize, (h as usize).saturating_sub(7).max(5)),
            _ => (usize::MAX, 20),
        };
        let text = self.render(store, window, width, self.cfg.rows.unwrap_or(rows));
        let mut out = std::io::stdout().lock();
        let _ = if self.cfg.terminal {
            // Home, clear, table: the screen is redrawn in place.
            write!(out, "\x1b[H\x1b[2J{text}")
        } else {
            writeln!(out, "{text}")
        };
        let _ = out.flush();
        self.drawn += 1;
        for r in &mut self.rows {
            r.own_now = 0;
            r.total_now = 0;
        }
        self.counted_now = 0;
        self.threads_now.clear();
        self.window_start = Instant::now();
    }
}

impl Sink for TopSink {
    fn on_sample(&mut self, sample: &SampleRef, store: &Store) {
        let Some(stack) = sample.stack.filter(|_| self.info.counts(sample)) else {
            return;
        };
        self.counted += 1;
        self.counted_now += 1;
        self.threads_now.insert(sample.tid);
        let ids = self.rows_of(stack, sample.thread, store).to_vec();
        for (i, &id) in ids.iter().enumerate() {
            let r = &mut self.rows[id as usize];
            r.total += 1;
            r.total_now += 1;
            if i == 0 {
                r.own += 1;
                r.own_now += 1;
            }
        }
    }

    fn on_reset(&mut self) {
        // Stack ids are no longer valid; rows are kept by name.
        self.stacks.clear();
    }

    fn tick(&mut self, store: &Store) {
        if self.window_start.elapsed() >= self.cfg.interval {
            self.draw(store, true);
        }
    }

    fn finish(mut self: Box<Self>, store: &Store) -> SinkReport {
        // The whole session's table stays on the screen (or ends the text).
        self.draw(store, false);
        SinkReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{FrameKey, FrameKind, NO_MODULE, NamedFrame};
    use crate::types::StackEnd;

    #[test]
    fn own_and_total_shares_count_recursion_once() {
        let mut store = Store::new();
        let named = |k: &FrameKey, _: &[Arc<crate::modules::Module>]| {
            let mut f = NamedFrame::marker(StackEnd::Root);
            f.kind = FrameKind::Native;
            f.label = match k.addr {
                1 => "main",
                2 => "recurse",
                3 => "leaf",
                _ => "wait",
            }
            .into();
            vec![f]
        };
        let key = |a| FrameKey {
            module: NO_MODULE,
            addr: a,
            is_return: false,
        };
        // main -> recurse -> recurse -> leaf (3 samples), main -> wait (1 waiting sample).
        let hot = store.intern(&[key(3), key(2), key(2), key(1)], StackEnd::Root, named);
        let idle = store.intern(&[key(4), key(1)], StackEnd::Root, named);
        let info = SessionInfo {
            program: "demo".into(),
            pid: 7,
            frequency: 100.0,
            idle: false,
            start: std::time::SystemTime::now(),
        };
        let cfg = TopConfig {
            interval: Duration::from_secs(1),
            by_thread: false,
            rows: None,
            terminal: false,
        };
        let mut top = TopSink::new(info, cfg);
        for (i, (stack, on_cpu)) in [(hot, true), (hot, true), (hot, true), (idle, false)]
            .into_iter()
            .enumerate()
        {
            let thread = store.add_sample(7, stack, StackEnd::Root, on_cpu);
            let s = SampleRef {
                tid: 7,
                thread,
                time_ns: i as u64 * 10_000_000,
                stack,
                end: StackEnd::Root,
                on_cpu,
            };
            top.on_sample(&s, &store);
        }
        let text = top.render(&store, true, 200, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("3 on-CPU samples"), "{text}");
        let row = |name: &str| {
            lines
                .iter()
                .find(|l| l.ends_with(&format!("  {name}")))
                .unwrap_or_else(|| panic!("no row {name} in\n{text}"))
                .split_whitespace()
                .take(4)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("leaf"), ["100.0%", "100.0%", "0.03s", "0.03s"]);
        assert_eq!(row("recurse"), ["0.0%", "100.0%", "0.00s", "0.03s"]);
        assert_eq!(row("main"), ["0.0%", "100.0%", "0.00s", "0.03s"]);
        assert!(
            !lines.iter().any(|l| l.ends_with("  wait")),
            "a waiting sample is not counted:\n{text}"
        );
        // The hottest first.
        let first_row = lines.iter().position(|l| l.contains("FUNCTION")).unwrap() + 1;
        assert!(lines[first_row].ends_with("leaf"));
    }
}
