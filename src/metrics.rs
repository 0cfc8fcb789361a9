//! Prometheus metrics (prometheus-client, OpenMetrics text). Names use base units and
//! prometheus-client appends `_total` to counters.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub api: String,
    pub outcome: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiOnlyLabels {
    pub api: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// What became of one payment notification: the `outcome` label of `coinpay_notifications`.
/// The handler, the notification parser and the metrics' pre-initialisation all name outcomes
/// through this one list, so that a label can neither drift nor be missing from the scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotificationOutcome {
    /// Credited now.
    Ok,
    /// The same payment again: acknowledged, nothing changed.
    Duplicate,
    /// Credited after the order had expired.
    LatePayment,
    /// A second, different payment of a paid order: acknowledged, refunded by hand.
    DoublePayment,
    /// The order refused the payment for another reason (logged).
    Rejected,
    IpDenied,
    Malformed,
    TooLarge,
    Doctype,
    ReturnFail,
    BadSignature,
    AppidMismatch,
    MchidMismatch,
    ResultFail,
    MissingField,
    BadField,
    AmountMismatch,
    UnknownOrder,
    StorageError,
}

impl NotificationOutcome {
    pub const ALL: [NotificationOutcome; 19] = [
        NotificationOutcome::Ok,
        NotificationOutcome::Duplicate,
        NotificationOutcome::LatePayment,
        NotificationOutcome::DoublePayment,
        NotificationOutcome::Rejected,
        NotificationOutcome::IpDenied,
        NotificationOutcome::Malformed,
        NotificationOutcome::TooLarge,
        NotificationOutcome::Doctype,
        NotificationOutcome::ReturnFail,
        NotificationOutcome::BadSignature,
        NotificationOutcome::AppidMismatch,
        NotificationOutcome::MchidMismatch,
        NotificationOutcome::ResultFail,
        NotificationOutcome::MissingField,
        NotificationOutcome::BadField,
        NotificationOutcome::AmountMismatch,
        NotificationOutcome::UnknownOrder,
        NotificationOutcome::StorageError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotificationOutcome::Ok => "ok",
            NotificationOutcome::Duplicate => "duplicate",
            NotificationOutcome::LatePayment => "late_payment",
            NotificationOutcome::DoublePayment => "double_payment",
            NotificationOutcome::Rejected => "rejected",
            NotificationOutcome::IpDenied => "ip_denied",
            NotificationOutcome::Malformed => "malformed",
            NotificationOutcome::TooLarge => "too_large",
            NotificationOutcome::Doctype => "doctype",
            NotificationOutcome::ReturnFail => "return_fail",
            NotificationOutcome::BadSignature => "bad_signature",
            NotificationOutcome::AppidMismatch => "appid_mismatch",
            NotificationOutcome::MchidMismatch => "mchid_mismatch",
            NotificationOutcome::ResultFail => "result_fail",
            NotificationOutcome::MissingField => "missing_field",
            NotificationOutcome::BadField => "bad_field",
            NotificationOutcome::AmountMismatch => "amount_mismatch",
            NotificationOutcome::UnknownOrder => "unknown_order",
            NotificationOutcome::StorageError => "storage_error",
        }
    }
}

/// Labels of `coinpay_refunds` (created at 0 at start).
pub const REFUND_OUTCOMES: [&str; 6] = [
    "created",
    "retry",
    "succeeded",
    "closed",
    "failed",
    "abnormal",
];

/// Labels of `coinpay_refund_notifications`: the answer's outcome, or the refusal's reason
/// (`RefundNotifyError::outcome`).
pub const REFUND_NOTIFICATION_OUTCOMES: [&str; 16] = [
    "ok",
    "duplicate",
    "ip_denied",
    "malformed",
    "too_large",
    "doctype",
    "return_fail",
    "missing_field",
    "appid_mismatch",
    "mchid_mismatch",
    "undecryptable",
    "bad_req_info",
    "unknown_refund",
    "amount_mismatch",
    "rejected",
    "storage_error",
];

fn outcome(s: &str) -> OutcomeLabels {
    OutcomeLabels {
        outcome: s.to_string(),
    }
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub notifications: Family<OutcomeLabels, Counter>,
    pub orders: Family<EventLabels, Counter>,
    pub pending_orders: Gauge,
    pub oldest_pending_age: Gauge<f64, AtomicU64>,
    pub coins_credited: Counter,
    pub fen_received: Counter,
    pub late_payments: Counter,
    pub anomalies: Family<KindLabels, Counter>,
    pub wechat_calls: Family<ApiLabels, Counter>,
    pub wechat_duration: Family<ApiOnlyLabels, Histogram>,
    pub sweeper_runs: Family<OutcomeLabels, Counter>,
    pub sweeper_orders: Family<OutcomeLabels, Counter>,
    pub sweeper_lease_held: Gauge,
    pub sweeper_last_success: Gauge<f64, AtomicU64>,
    pub db_connections: Family<StateLabels, Gauge>,
    pub db_up: Gauge,
    pub redis_up: Gauge,
    pub redis_configured: Gauge,
    pub actor_restarts: Counter,
    pub live_actors: Gauge,
    pub consumes: Family<OutcomeLabels, Counter>,
    pub admin_actions: Family<KindLabels, Counter>,
    pub order_numbers_fallback: Counter,
    pub reconcile: ReconcileMetrics,
    pub refunds: Family<OutcomeLabels, Counter>,
    pub refunded_fen: Counter,
    pub refunds_processing: Gauge,
    pub oldest_processing_refund_age: Gauge<f64, AtomicU64>,
    pub refund_notifications: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let latency = || Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let http_duration =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let wechat_duration =
            Family::<ApiOnlyLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        let m = Metrics {
            http_requests: Family::default(),
            http_duration,
            notifications: Family::default(),
            orders: Family::default(),
            pending_orders: Gauge::default(),
            oldest_pending_age: Gauge::default(),
            coins_credited: Counter::default(),
            fen_received: Counter::default(),
            late_payments: Counter::default(),
            anomalies: Family::default(),
            wechat_calls: Family::default(),
            wechat_duration,
            sweeper_runs: Family::default(),
            sweeper_orders: Family::default(),
            sweeper_lease_held: Gauge::default(),
            sweeper_last_success: Gauge::default(),
            db_connections: Family::default(),
            db_up: Gauge::default(),
            redis_up: Gauge::default(),
            redis_configured: Gauge::default(),
            actor_restarts: Counter::default(),
            live_actors: Gauge::default(),
            consumes: Family::default(),
            admin_actions: Family::default(),
            order_numbers_fallback: Counter::default(),
            reconcile: ReconcileMetrics::default(),
            refunds: Family::default(),
            refunded_fen: Counter::default(),
            refunds_processing: Gauge::default(),
            oldest_processing_refund_age: Gauge::default(),
            refund_notifications: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "coinpay_http_requests",
            "HTTP requests by route, method and status",
            m.http_requests.clone(),
        );
        r.register(
            "coinpay_http_request_duration_seconds",
            "HTTP request latency",
            m.http_duration.clone(),
        );
        r.register(
            "coinpay_notifications",
            "WeChat Pay notifications by outcome",
            m.notifications.clone(),
        );
        r.register(
            "coinpay_orders",
            "Order events: created, paid, expired, failed",
            m.orders.clone(),
        );
        r.register(
            "coinpay_pending_orders",
            "Orders awaiting payment",
            m.pending_orders.clone(),
        );
        r.register(
            "coinpay_oldest_pending_order_age_seconds",
            "Age of the oldest pending order",
            m.oldest_pending_age.clone(),
        );
        r.register(
            "coinpay_coins_credited",
            "Coins (with bonus) credited by payments",
            m.coins_credited.clone(),
        );
        r.register(
            "coinpay_fen_received",
            "Money received, in fen",
            m.fen_received.clone(),
        );
        r.register(
            "coinpay_late_payments",
            "Payments credited after the order expired",
            m.late_payments.clone(),
        );
        r.register(
            "coinpay_payment_anomalies",
            "Payments not credited: amount mismatch, double payment",
            m.anomalies.clone(),
        );
        r.register(
            "coinpay_wechat_api_calls",
            "WeChat API calls by api and outcome",
            m.wechat_calls.clone(),
        );
        r.register(
            "coinpay_wechat_api_duration_seconds",
            "WeChat API call latency",
            m.wechat_duration.clone(),
        );
        r.register(
            "coinpay_sweeper_runs",
            "Sweeper runs by outcome",
            m.sweeper_runs.clone(),
        );
        r.register(
            "coinpay_sweeper_orders",
            "Orders handled by the sweeper by outcome",
            m.sweeper_orders.clone(),
        );
        r.register(
            "coinpay_sweeper_lease_held",
            "Whether this instance holds the sweeper lease (1) or not (0)",
            m.sweeper_lease_held.clone(),
        );
        r.register(
            "coinpay_sweeper_last_success_timestamp_seconds",
            "Unix time of the last successful sweep",
            m.sweeper_last_success.clone(),
        );
        r.register(
            "coinpay_db_pool_connections",
            "Database pool connections by state",
            m.db_connections.clone(),
        );
        r.register(
            "coinpay_db_up",
            "1 when the database answered the last check",
            m.db_up.clone(),
        );
        r.register(
            "coinpay_db_retries",
            "Database work run again after a Galera certification conflict, a deadlock or a lost node, by reason",
            crate::store::galera::retries().clone(),
        );
        r.register(
            "coinpay_redis_up",
            "1 when Redis answered the last check (0 also when not configured)",
            m.redis_up.clone(),
        );
        r.register(
            "coinpay_redis_configured",
            "1 when REDIS_HOST is set (then coinpay_redis_up 0 is an outage)",
            m.redis_configured.clone(),
        );
        r.register(
            "coinpay_order_actor_restarts",
            "Order actors restarted after a panic",
            m.actor_restarts.clone(),
        );
        r.register(
            "coinpay_order_actors",
            "Live order actors",
            m.live_actors.clone(),
        );
        r.register(
            "coinpay_consumes",
            "Internal consume calls by outcome",
            m.consumes.clone(),
        );
        r.register(
            "coinpay_admin_actions",
            "Admin writes by action",
            m.admin_actions.clone(),
        );
        r.register(
            "coinpay_order_number_fallbacks",
            "Order numbers made without Redis while Redis was configured",
            m.order_numbers_fallback.clone(),
        );
        m.reconcile.register(&mut r);
        r.register(
            "coinpay_refunds",
            "Refund events by outcome: created, retry, succeeded, closed, failed, abnormal",
            m.refunds.clone(),
        );
        r.register(
            "coinpay_refunded_fen",
            "Fen refunded (refunds that succeeded)",
            m.refunded_fen.clone(),
        );
        r.register(
            "coinpay_refunds_processing",
            "Refunds waiting for WeChat's result",
            m.refunds_processing.clone(),
        );
        r.register(
            "coinpay_oldest_processing_refund_age_seconds",
            "Age of the oldest refund still processing",
            m.oldest_processing_refund_age.clone(),
        );
        r.register(
            "coinpay_refund_notifications",
            "WeChat refund notifications by outcome",
            m.refund_notifications.clone(),
        );
        m.preinit();
        Metrics { registry: r, ..m }
    }

    /// Creates every known label set at 0: prometheus-client leaves a family without series out
    /// of the scrape, and `increase()` cannot see the first event of a series that starts at 1.
    fn preinit(&self) {
        for o in NotificationOutcome::ALL {
            let _ = self.notifications.get_or_create(&outcome(o.as_str()));
        }
        for o in REFUND_OUTCOMES {
            let _ = self.refunds.get_or_create(&outcome(o));
        }
        for o in REFUND_NOTIFICATION_OUTCOMES {
            let _ = self.refund_notifications.get_or_create(&outcome(o));
        }
        for e in ["created", "paid", "expired", "failed"] {
            let _ = self.orders.get_or_create(&EventLabels { event: e.into() });
        }
        for k in ["amount_mismatch", "double_payment"] {
            let _ = self.anomalies.get_or_create(&KindLabels { kind: k.into() });
        }
        for api in ["unifiedorder", "orderquery", "closeorder", "jscode2session"] {
            for o in [
                "ok",
                "business_error",
                "bad_signature",
                "transport_error",
                "timeout",
                "protocol_error",
            ] {
                let _ = self.wechat_calls.get_or_create(&ApiLabels {
                    api: api.into(),
                    outcome: o.into(),
                });
            }
            let _ = self
                .wechat_duration
                .get_or_create(&ApiOnlyLabels { api: api.into() });
        }
        for o in ["ok", "partial", "error", "not_leader", "skipped_overlap"] {
            let _ = self.sweeper_runs.get_or_create(&outcome(o));
        }
        for o in [
            "looked_at",
            "expired",
            "recovered_paid",
            "left_pending",
            "failed",
        ] {
            let _ = self.sweeper_orders.get_or_create(&outcome(o));
        }
        for o in [
            "ok",
            "replayed",
            "request_id_conflict",
            "insufficient_balance",
            "unknown_user",
            "storage_error",
        ] {
            let _ = self.consumes.get_or_create(&outcome(o));
        }
        for k in [
            "package_create",
            "package_update",
            "order_recheck",
            "balance_adjust",
            "reconcile",
        ] {
            let _ = self
                .admin_actions
                .get_or_create(&KindLabels { kind: k.into() });
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts one notification, and with it the payment anomaly it revealed, if any: the one
    /// place where a notification's event is counted.
    pub fn notification(&self, o: NotificationOutcome, anomaly: Option<&str>) {
        self.notifications.get_or_create(&outcome(o.as_str())).inc();
        if let Some(kind) = anomaly {
            self.anomaly(kind);
        }
    }
    pub fn refund_event(&self, o: &str) {
        self.refunds.get_or_create(&outcome(o)).inc();
    }
    pub fn refund_notification(&self, o: &str) {
        self.refund_notifications.get_or_create(&outcome(o)).inc();
    }
    pub fn order_event(&self, event: &str) {
        self.orders
            .get_or_create(&EventLabels {
                event: event.to_string(),
            })
            .inc();
    }
    pub fn anomaly(&self, kind: &str) {
        self.anomalies
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }
    pub fn wechat_call(&self, api: &str, o: &str, secs: f64) {
        self.wechat_calls
            .get_or_create(&ApiLabels {
                api: api.to_string(),
                outcome: o.to_string(),
            })
            .inc();
        self.wechat_duration
            .get_or_create(&ApiOnlyLabels {
                api: api.to_string(),
            })
            .observe(secs);
    }
    pub fn sweeper_run(&self, o: &str) {
        self.sweeper_runs.get_or_create(&outcome(o)).inc();
    }
    pub fn sweeper_order(&self, o: &str, n: u64) {
        self.sweeper_orders.get_or_create(&outcome(o)).inc_by(n);
    }
    pub fn consume(&self, o: &str) {
        self.consumes.get_or_create(&outcome(o)).inc();
    }
    pub fn admin_action(&self, action: &str) {
        self.admin_actions
            .get_or_create(&KindLabels {
                kind: action.to_string(),
            })
            .inc();
    }
}

/// Daily reconciliation against WeChat's bill (issue 13). The gauges describe the latest bill
/// date in the database, read at scrape time like the pending orders (so every instance reports
/// the same values: aggregate them with max()); the counters count this instance's runs.
#[derive(Default)]
pub struct ReconcileMetrics {
    /// Runs by outcome: balanced, differences, no_bill, error, skipped, not_leader.
    pub runs: Family<OutcomeLabels, Counter>,
    /// Failed runs by the bill error's kind (bad_gzip, unknown_layout, bad_amount, refused…).
    pub errors: Family<KindLabels, Counter>,
    /// `missing_local` payments credited through their order's actor.
    pub credited: Counter,
    /// Midnight (Beijing) of the last reconciled bill date, as Unix time.
    pub last_bill_date: Gauge<f64, AtomicU64>,
    /// When a reconciliation last succeeded (any status but error), as Unix time.
    pub last_success: Gauge<f64, AtomicU64>,
    /// 1 for the status of the last reconciled day, 0 for the others.
    pub last_status: Family<StateLabels, Gauge>,
    /// Open differences of the last reconciled day, by kind.
    pub differences: Family<KindLabels, Gauge>,
}

impl ReconcileMetrics {
    pub const RUN_OUTCOMES: [&'static str; 6] = [
        "balanced",
        "differences",
        "no_bill",
        "error",
        "skipped",
        "not_leader",
    ];

    fn register(&self, r: &mut Registry) {
        r.register(
            "coinpay_reconciliation_runs",
            "Reconciliation runs by outcome",
            self.runs.clone(),
        );
        r.register(
            "coinpay_reconciliation_errors",
            "Failed reconciliation runs by error kind",
            self.errors.clone(),
        );
        r.register(
            "coinpay_reconciliation_credited",
            "Payments found missing locally and credited through their order's actor",
            self.credited.clone(),
        );
        r.register(
            "coinpay_reconciliation_last_bill_date_timestamp_seconds",
            "Beijing midnight of the last reconciled bill date",
            self.last_bill_date.clone(),
        );
        r.register(
            "coinpay_reconciliation_last_success_timestamp_seconds",
            "Unix time of the last reconciliation that did not fail",
            self.last_success.clone(),
        );
        r.register(
            "coinpay_reconciliation_last_status",
            "1 for the status of the last reconciled day",
            self.last_status.clone(),
        );
        r.register(
            "coinpay_reconciliation_differences",
            "Open differences of the last reconciled day, by kind",
            self.differences.clone(),
        );
        // Every labelled series exists from the start (at 0), so that alert rules and the
        // dashboard see the family before the first run, error or difference.
        for o in Self::RUN_OUTCOMES {
            let _ = self.runs.get_or_create(&outcome(o));
        }
        for k in crate::wechat::bill::BillError::KINDS {
            let _ = self.errors.get_or_create(&KindLabels {
                kind: k.to_string(),
            });
        }
        for s in crate::reconcile::report::ReconStatus::ALL {
            let _ = self.last_status.get_or_create(&StateLabels {
                state: s.as_str().to_string(),
            });
        }
        for k in crate::reconcile::report::DifferenceKind::ALL {
            let _ = self.differences.get_or_create(&KindLabels {
                kind: k.as_str().to_string(),
            });
        }
    }

    pub fn run(&self, o: &str) {
        self.runs.get_or_create(&outcome(o)).inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// The state of the last reconciled day: its date (Beijing midnight, Unix seconds), its
    /// status, and its open differences by kind (every kind named, zeros included).
    pub fn day(&self, midnight: f64, status: &str, open: &[(&str, i64)], kinds: &[&str]) {
        self.last_bill_date.set(midnight);
        for s in ["balanced", "differences", "no_bill", "error"] {
            self.last_status
                .get_or_create(&StateLabels { state: s.into() })
                .set(i64::from(s == status));
        }
        for k in kinds {
            let n = open
                .iter()
                .filter(|(kind, _)| kind == k)
                .map(|(_, n)| n)
                .sum();
            self.differences
                .get_or_create(&KindLabels {
                    kind: (*k).to_string(),
                })
                .set(n);
        }
    }
}
