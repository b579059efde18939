//! Immediate alerts: an attempt on an alert-flagged category (illegal, extremist, self-harm by
//! default) reaches the safeguarding lead within minutes, by email and/or an HTTP webhook.
//!
//! The journal's writer thread calls [`Alerter::offer`] for each breach; it decides in memory
//! whether this client and category were alerted within the window and, if not, hands the
//! alert to a bounded queue. A separate thread delivers, retrying with backoff. Nothing here
//! runs on the query path, and a slow or failing mail server or webhook only delays alerts.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::config::Config;
use crate::journal::{format_time, Event};
use crate::mail::Mailer;
use crate::timezone::Zone;

/// Alerts waiting for delivery; beyond this they are counted and logged, never queued.
const QUEUE: usize = 1024;
/// Longest pause between delivery attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a webhook may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why alerts could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The mail settings are unusable.
    #[error(transparent)]
    Mail(#[from] crate::mail::MailError),
    /// The delivery thread did not start.
    #[error("cannot start the alert thread: {0}")]
    Thread(std::io::Error),
}

/// One alert, as POSTed to the webhook (JSON) and summarised in the email.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// A one-line summary (chat webhooks show this field).
    pub text: String,
    /// The school.
    pub school: String,
    /// Local time of the attempt.
    pub time: String,
    /// Device address.
    pub client: String,
    /// Configured device name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// Its group.
    pub group: String,
    /// The name asked for.
    pub name: String,
    /// The alert-flagged category.
    pub category: String,
    /// Attempts by this device on this category since its previous alert that were not
    /// sent separately (the window limits messages, not what is counted).
    pub suppressed: u64,
}

/// The writer thread's side: the dedupe window and the queue.
pub struct Alerter {
    tx: Sender<Alert>,
    window: Duration,
    tz: Zone,
    school: String,
    last: FxHashMap<(IpAddr, String), (Instant, u64)>,
}

/// Where alerts go.
struct Delivery {
    webhook: Option<(ureq::Agent, String)>,
    mail: Option<(Mailer, Vec<String>)>,
    retries: u32,
}

/// Whether a reload changed anything an [`Alerter`] was started with.
pub fn settings_changed(old: &Config, new: &Config) -> bool {
    old.alerts != new.alerts
        || old.smtp != new.smtp
        || old.report.school != new.report.school
        || old.time_zone != new.time_zone
}

impl Alerter {
    /// Starts the delivery thread, or returns `None` when no webhook or recipients are set.
    pub fn start(config: &Config) -> Result<Option<Alerter>, AlertError> {
        let a = &config.alerts;
        let mail = match (&config.smtp, a.recipients.is_empty()) {
            (Some(smtp), false) => Some((Mailer::new(smtp)?, a.recipients.clone())),
            _ => None,
        };
        let webhook = a.webhook.clone().map(|url| {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(WEBHOOK_TIMEOUT))
                .build()
                .into();
            (agent, url)
        });
        if mail.is_none() && webhook.is_none() {
            return Ok(None);
        }
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let delivery = Delivery {
            webhook,
            mail,
            retries: a.retries,
        };
        std::thread::Builder::new()
            .name("alerts".into())
            .spawn(move || delivery.run(rx))
            .map_err(AlertError::Thread)?;
        Ok(Some(Alerter {
            tx,
            window: a.window,
            tz: config.time_zone.clone(),
            school: config.report.school.clone(),
            last: FxHashMap::default(),
        }))
    }

    /// Considers a breach: queues an alert if its category is alert-flagged and this device
    /// has not had one for the category within the window. Never blocks.
    pub fn offer(&mut self, ev: &Event) {
        let Some(d) = ev.decision else { return };
        let Some(cat) = d
            .category
            .and_then(|c| ev.engine.categories().get(c as usize))
        else {
            return;
        };
        if !cat.alert {
            return;
        }
        let now = Instant::now();
        let key = (ev.client.addr, cat.name.clone());
        let suppressed = match self.last.get_mut(&key) {
            Some((at, n)) if now.duration_since(*at) < self.window => {
                *n += 1;
                return;
            }
            Some((at, n)) => {
                *at = now;
                std::mem::take(n)
            }
            None => {
                if self.last.len() > 10_000 {
                    let window = self.window;
                    self.last
                        .retain(|_, (at, _)| now.duration_since(*at) < window);
                }
                self.last.insert(key, (now, 0));
                0
            }
        };
        let client_name = ev.engine.client_name(&ev.client).map(str::to_string);
        let device = match &client_name {
            Some(n) => format!("{n} ({})", ev.client.addr),
            None => ev.client.addr.to_string(),
        };
        let time = format_time(ev.time, &self.tz);
        let alert = Alert {
            text: format!(
                "{}: {} attempt by {device} at {}: {}",
                self.school,
                cat.name,
                time.get(11..19).unwrap_or(&time),
                ev.name
            ),
            school: self.school.clone(),
            time,
            client: ev.client.addr.to_string(),
            client_name,
            group: ev.engine.group_name(d.group).to_string(),
            name: ev.name.to_string(),
            category: cat.name.clone(),
            suppressed,
        };
        match self.tx.try_send(alert) {
            Ok(()) => {}
            Err(TrySendError::Full(a)) | Err(TrySendError::Disconnected(a)) => {
                tracing::error!("alert queue full; not sent: {}", a.text);
            }
        }
    }
}

impl Delivery {
    fn run(self, rx: Receiver<Alert>) {
        for alert in rx {
            if let Some((agent, url)) = &self.webhook {
                self.retry(&alert, "webhook", || {
                    let body = serde_json::to_string(&alert).unwrap_or_default();
                    agent
                        .post(url)
                        .content_type("application/json")
                        .send(body)
                        .map(drop)
                        .map_err(|e| e.to_string())
                });
            }
            if let Some((mailer, to)) = &self.mail {
                self.retry(&alert, "email", || {
                    mailer
                        .send(to, &format!("ALERT: {}", alert.text), body(&alert), None)
                        .map_err(|e| e.to_string())
                });
            }
        }
    }

    /// Tries up to `retries` times with doubling pauses; a final failure is logged as an error.
    fn retry(&self, alert: &Alert, how: &str, mut send: impl FnMut() -> Result<(), String>) {
        let mut pause = Duration::from_secs(1);
        for attempt in 1..=self.retries {
            match send() {
                Ok(()) => return,
                Err(e) if attempt == self.retries => {
                    tracing::error!(
                        "alert {how} failed after {attempt} attempts ({e}); not delivered: {}",
                        alert.text
                    );
                }
                Err(e) => {
                    tracing::warn!("alert {how} failed ({e}); retrying in {}s", pause.as_secs());
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn body(a: &Alert) -> String {
    let mut s = format!(
        "{}\n\nTime:     {}\nDevice:   {}{}\nGroup:    {}\nName:     {}\nCategory: {}\n",
        a.text,
        a.time,
        a.client,
        a.client_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        a.group,
        a.name,
        a.category
    );
    if a.suppressed > 0 {
        s.push_str(&format!(
            "\nThis device made {} more attempts on this category since its previous alert.\n",
            a.suppressed
        ));
    }
    s.push_str("\nFollow up with: schoolgate logs --client ");
    s.push_str(&a.client);
    s.push('\n');
    s
}
