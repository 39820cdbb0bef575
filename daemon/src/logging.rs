//! Structured logs on stderr (tracing), with a log level that a reload can
//! change at runtime.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log level of the running daemon.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over the configuration, also on reload.
    env_override: bool,
    /// See [`SpanScopes`].
    span_scopes: Arc<AtomicBool>,
}

/// The reloadable level filter, told of span entries and exits only once a
/// directive names a span (`target[span{field=value}]=level`, always with a
/// `[`). Every session task runs inside its span (peer, id), entered and
/// exited on each poll; the reload layer takes a read lock shared by every
/// thread to forward each of them, and `EnvFilter` a second one to find that
/// the span is of no interest to a filter without span directives: four
/// atomic operations on two cache lines all cores write, per poll, a few
/// percent of a busy server's CPU (fleet benchmark, stop 14). Once span
/// directives were seen the filter is told everything, for good (a reload
/// back must not leave an entered span on its per-thread scope).
struct SpanScopes<L> {
    inner: L,
    on: Arc<AtomicBool>,
}

/// True when an `EnvFilter` directive string filters by span.
fn names_spans(directives: &str) -> bool {
    directives.contains('[')
}

impl<S: Subscriber, L: Layer<S>> Layer<S> for SpanScopes<L> {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.inner.on_register_dispatch(subscriber)
    }
    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber)
    }
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }
    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_new_span(attrs, id, ctx)
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.inner.max_level_hint()
    }
    fn on_record(&self, span: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.inner.on_record(span, values, ctx)
    }
    fn on_follows_from(&self, span: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(span, follows, ctx)
    }
    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.inner.on_event(event, ctx)
    }
    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.on.load(Relaxed) {
            self.inner.on_enter(id, ctx)
        }
    }
    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        if self.on.load(Relaxed) {
            self.inner.on_exit(id, ctx)
        }
    }
    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx)
    }
    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx)
    }
}

/// Installs the global subscriber: `RUST_LOG` if set and valid, else `level`
/// (a tracing `EnvFilter` directive such as `info` or `metalbondd=debug`).
pub fn init(level: &str, json: bool) -> LogControl {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_override = from_env.is_some();
    let directives = if env_override {
        std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default()
    } else {
        level.to_string()
    };
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let span_scopes = Arc::new(AtomicBool::new(names_spans(&directives)));
    let filter = SpanScopes {
        inner: filter,
        on: span_scopes.clone(),
    };
    // Colours only for a person at a terminal, never in files or journald.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry.with(fmt.json()).init();
    } else if stderr_is_journal() {
        // journald stamps every line itself: no second timestamp.
        registry.with(fmt.without_time()).init();
    } else {
        registry.with(fmt).init();
    }
    LogControl {
        handle,
        env_override,
        span_scopes,
    }
}

/// True when stderr is connected to the systemd journal: `$JOURNAL_STREAM`
/// names the device and inode of that stream (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream
        .to_str()
        .and_then(|s| s.split_once(':'))
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
    else {
        return false;
    };
    // SAFETY: fstat on the process's stderr descriptor into a zeroed stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

impl LogControl {
    /// Switches to `level`. Returns what happened, for the reload report.
    pub fn set_level(&self, level: &str) -> Result<String, String> {
        if self.env_override {
            return Ok(format!(
                "log level {level:?} not applied: RUST_LOG is set and wins"
            ));
        }
        let filter = EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}"))?;
        if names_spans(level) {
            // Before the filter that needs them: no entry is missed.
            self.span_scopes.store(true, Relaxed);
        }
        self.handle
            .reload(filter)
            .map_err(|e| format!("log level {level:?}: {e}"))?;
        Ok(format!("log.level = {level}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_span_directives_name_spans() {
        assert!(!names_spans("info"));
        assert!(!names_spans("metalbondd=debug,h2=warn"));
        assert!(names_spans(
            "metalbondd[session{peer=\"[::1]:4711\"}]=debug"
        ));
        assert!(names_spans("[session]=trace"));
    }

    #[test]
    fn span_directives_still_filter_inside_their_span() {
        // The layer as the daemon builds it, on a local subscriber: an event
        // enabled only inside the span must be seen there and only there.
        use std::sync::Mutex;
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        struct Collect(Arc<Mutex<Vec<String>>>);
        impl<S: Subscriber> Layer<S> for Collect {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                self.0
                    .lock()
                    .unwrap()
                    .push(event.metadata().target().to_string());
            }
        }
        let directives = "warn,[session]=debug";
        let (filter, _handle) = reload::Layer::new(EnvFilter::new(directives));
        let subscriber = tracing_subscriber::registry()
            .with(SpanScopes {
                inner: filter,
                on: Arc::new(AtomicBool::new(names_spans(directives))),
            })
            .with(Collect(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "outside", "not shown");
            let span = tracing::info_span!("session", id = 1);
            span.in_scope(|| tracing::debug!(target: "inside", "shown"));
            tracing::debug!(target: "after", "not shown");
        });
        assert_eq!(*seen.lock().unwrap(), vec!["inside".to_string()]);
    }
}
