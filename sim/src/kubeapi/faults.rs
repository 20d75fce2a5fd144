//! Faults the stand-in can be told to show: dropped connections, throttling, server errors,
//! silence and compaction; and their JSON form on the admin path.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// A fault to inject, through [`StandIn::fault`](super::StandIn::fault) or
/// `POST /weft-standin/faults`.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Lifts every fault in effect (throttling, errors, silence).
    Clear,
    /// Moves the compaction point to the current resourceVersion: watches and continue
    /// tokens from older versions get 410 Gone.
    Compact,
    /// Closes every open connection, and with them every watch, at once.
    DropConnections,
    /// Answers API requests with `code` (500, 503 or another error code) and a `Status`.
    Fail {
        /// The HTTP status code.
        code: u16,
        /// How many requests, or for how long.
        span: Span,
    },
    /// Answers API requests for objects of `kind` only with `code` (the other kinds work).
    FailKind {
        /// The HTTP status code.
        code: u16,
        /// The kind whose requests fail.
        kind: super::Kind,
        /// How many of its requests, or for how long.
        span: Span,
    },
    /// Accepts requests but answers nothing for `duration`: requests wait, open watches get
    /// no events and no bookmarks; all of it is delivered when the silence ends.
    Silence {
        /// How long.
        duration: Duration,
    },
    /// Answers API requests with 429 TooManyRequests and `Retry-After: retry_after`.
    Throttle {
        /// The `Retry-After` header's seconds.
        retry_after: u32,
        /// How many requests, or for how long.
        span: Span,
    },
}

/// How long a fault lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// For this long, from now.
    For(Duration),
    /// For the next N API requests.
    Requests(u32),
}

/// What a request meets: the fault that answers it instead of the API, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Fail(u16),
    Pass,
    Throttle(u32),
}

/// The faults in effect.
#[derive(Debug, Default)]
pub(crate) struct FaultState {
    throttle: Option<(u32, Remaining)>,
    fail: Option<(u16, Remaining)>,
    fail_kind: Option<(u16, super::Kind, Remaining)>,
    silent_until: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
enum Remaining {
    Requests(u32),
    Until(Instant),
}

impl Remaining {
    fn new(span: Span, now: Instant) -> Self {
        match span {
            Span::For(d) => Self::Until(now + d),
            Span::Requests(n) => Self::Requests(n),
        }
    }

    /// Takes one request's worth; returns false once the span is used up.
    fn take(&mut self, now: Instant) -> bool {
        match self {
            Self::Requests(0) => false,
            Self::Requests(n) => {
                *n -= 1;
                true
            }
            Self::Until(t) => now < *t,
        }
    }
}

impl FaultState {
    /// Records a fault other than the ones acting outside this state (drop, compact).
    pub(crate) fn set(&mut self, fault: &Fault, now: Instant) {
        match fault {
            Fault::Clear => *self = Self::default(),
            Fault::Compact | Fault::DropConnections => {}
            Fault::Fail { code, span } => self.fail = Some((*code, Remaining::new(*span, now))),
            Fault::FailKind { code, kind, span } => {
                self.fail_kind = Some((*code, *kind, Remaining::new(*span, now)));
            }
            Fault::Silence { duration } => self.silent_until = Some(now + *duration),
            Fault::Throttle { retry_after, span } => {
                self.throttle = Some((*retry_after, Remaining::new(*span, now)));
            }
        }
    }

    /// Returns the end of the current silence, if one is in effect.
    pub(crate) fn silent_until(&self, now: Instant) -> Option<Instant> {
        self.silent_until.filter(|&t| t > now)
    }

    /// Decides how one API request for objects of `kind` is answered.
    pub(crate) fn verdict_for(&mut self, now: Instant, kind: super::Kind) -> Verdict {
        if let Some((code, of, remaining)) = &mut self.fail_kind
            && *of == kind
        {
            if remaining.take(now) {
                return Verdict::Fail(*code);
            }
            self.fail_kind = None;
        }
        self.verdict(now)
    }

    /// Decides how one API request is answered, using up a request of a counted fault.
    pub(crate) fn verdict(&mut self, now: Instant) -> Verdict {
        if let Some((retry_after, remaining)) = &mut self.throttle {
            if remaining.take(now) {
                return Verdict::Throttle(*retry_after);
            }
            self.throttle = None;
        }
        if let Some((code, remaining)) = &mut self.fail {
            if remaining.take(now) {
                return Verdict::Fail(*code);
            }
            self.fail = None;
        }
        Verdict::Pass
    }
}

/// The JSON body of `POST /weft-standin/faults`, e.g. `{"fault":"throttle","retryAfter":1,
/// "requests":3}`, `{"fault":"silence","seconds":2.5}` or `{"fault":"fail","code":500,
/// "seconds":30,"kind":"Pod"}` (only that kind's requests fail).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct FaultRequest {
    fault: String,
    code: Option<u16>,
    retry_after: Option<u32>,
    requests: Option<u32>,
    seconds: Option<f64>,
    kind: Option<String>,
}

impl FaultRequest {
    /// Converts the request into a fault.
    ///
    /// # Errors
    ///
    /// A message for an unknown fault or missing or conflicting fields.
    pub(crate) fn into_fault(self) -> Result<Fault, String> {
        let duration = match self.seconds {
            Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
            Some(s) => return Err(format!("seconds: {s} is not a duration")),
            None => None,
        };
        let span = match (self.requests, duration) {
            (Some(n), None) => Ok(Span::Requests(n)),
            (None, Some(d)) => Ok(Span::For(d)),
            (Some(_), Some(_)) => Err("give requests or seconds, not both".to_owned()),
            (None, None) => Err("give requests or seconds".to_owned()),
        };
        match self.fault.as_str() {
            "clear" => Ok(Fault::Clear),
            "compact" => Ok(Fault::Compact),
            "drop" => Ok(Fault::DropConnections),
            "fail" => {
                let code = self.code.unwrap_or(500);
                if !(400..600).contains(&code) {
                    return Err(format!("code {code} is not an error code"));
                }
                match self.kind {
                    None => Ok(Fault::Fail { code, span: span? }),
                    Some(k) => {
                        let kind =
                            super::Kind::parse(&k).ok_or_else(|| format!("unknown kind {k}"))?;
                        Ok(Fault::FailKind {
                            code,
                            kind,
                            span: span?,
                        })
                    }
                }
            }
            "silence" => {
                let duration = duration.ok_or("silence needs seconds")?;
                Ok(Fault::Silence { duration })
            }
            "throttle" => Ok(Fault::Throttle {
                retry_after: self.retry_after.unwrap_or(1),
                span: span?,
            }),
            other => Err(format!(
                "unknown fault {other:?} (clear, compact, drop, fail, silence, throttle)"
            )),
        }
    }
}
