-- Daily reconciliation against WeChat's bill (issue 13). One report per Beijing bill date
-- (re-runs replace it), its differences, and the raw bill of each day as WeChat sent it
-- (gzip), kept because WeChat only serves the last three months.
CREATE TABLE reconciliations (
    bill_date VARCHAR(10) NOT NULL PRIMARY KEY,
    status VARCHAR(16) NOT NULL,
    error VARCHAR(1024) NULL,
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
    updated_at BIGINT NOT NULL,
    KEY ix_reconciliations_status (status, bill_date)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE reconciliation_differences (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    bill_date VARCHAR(10) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    order_no VARCHAR(64) NULL,
    transaction_id VARCHAR(64) NULL,
    out_refund_no VARCHAR(64) NULL,
    wechat_fen BIGINT NULL,
    local_fen BIGINT NULL,
    action VARCHAR(32) NOT NULL,
    created_at BIGINT NOT NULL,
    KEY ix_differences_date (bill_date, id),
    KEY ix_differences_kind_order (kind, order_no)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE reconciliation_bills (
    bill_date VARCHAR(10) NOT NULL PRIMARY KEY,
    gzip LONGBLOB NOT NULL,
    fetched_at BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
