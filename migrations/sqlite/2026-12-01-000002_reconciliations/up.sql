-- Daily reconciliation against WeChat's bill (issue 13). One report per Beijing bill date
-- (re-runs replace it), its differences, and the raw bill of each day as WeChat sent it
-- (gzip), kept because WeChat only serves the last three months.
CREATE TABLE reconciliations (
    bill_date VARCHAR(10) PRIMARY KEY NOT NULL,
    status VARCHAR(16) NOT NULL,
    error VARCHAR(1024),
    wechat_count BIGINT NOT NULL DEFAULT 0,
    wechat_paid_fen BIGINT NOT NULL DEFAULT 0,
    wechat_refund_fen BIGINT NOT NULL DEFAULT 0,
    wechat_fee_fen BIGINT NOT NULL DEFAULT 0,
    local_count BIGINT NOT NULL DEFAULT 0,
    local_paid_fen BIGINT NOT NULL DEFAULT 0,
    local_refund_fen BIGINT NOT NULL DEFAULT 0,
    difference_count BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX ix_reconciliations_status ON reconciliations (status, bill_date);

CREATE TABLE reconciliation_differences (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    bill_date VARCHAR(10) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    order_no VARCHAR(64),
    transaction_id VARCHAR(64),
    out_refund_no VARCHAR(64),
    wechat_fen BIGINT,
    local_fen BIGINT,
    action VARCHAR(32) NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ix_differences_date ON reconciliation_differences (bill_date, id);
CREATE INDEX ix_differences_kind_order ON reconciliation_differences (kind, order_no);

CREATE TABLE reconciliation_bills (
    bill_date VARCHAR(10) PRIMARY KEY NOT NULL,
    gzip BLOB NOT NULL,
    fetched_at BIGINT NOT NULL
);
