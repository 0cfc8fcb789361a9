-- Refunds (issue 12). A refund's coins are reserved in the transaction that creates its row;
-- its ledger rows (kind `refund`, and `refund_reversal` when the money never moves) carry the
-- refund_no in request_id, so the unique (kind, request_id) allows one of each per refund
-- while (kind, order_no) keeps meaning "one recharge per order" (refund rows leave order_no NULL).
CREATE TABLE refunds (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    refund_no VARCHAR(32) NOT NULL,
    order_no VARCHAR(32) NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id),
    refund_fen BIGINT NOT NULL CHECK (refund_fen > 0),
    coins BIGINT NOT NULL CHECK (coins >= 0),
    status VARCHAR(16) NOT NULL,
    reason VARCHAR(255) NOT NULL,
    request_id VARCHAR(64) NOT NULL,
    wechat_refund_id VARCHAR(64),
    wechat_err_code VARCHAR(64),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    succeeded_at BIGINT,
    version BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX uq_refunds_refund_no ON refunds (refund_no);
CREATE UNIQUE INDEX uq_refunds_request_id ON refunds (request_id);
CREATE INDEX ix_refunds_order ON refunds (order_no, id);
CREATE INDEX ix_refunds_status_updated ON refunds (status, updated_at);

-- What the refunds still holding money took of the order (processing, succeeded, abnormal).
ALTER TABLE recharge_orders ADD COLUMN refunded_fen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE recharge_orders ADD COLUMN refunded_coins BIGINT NOT NULL DEFAULT 0;
